"""Named pretraining recipes: data, defined once, used by the CLI, Makefile, demo and tests.

A recipe is a set of ``PretrainConfig`` overrides; ``options`` inside one holds method
option values (sizes shared across methods: each method takes the ones it has). Flags given
on the command line win over the recipe: ``python -m pretrain --recipe shapes-cpu --method
byol --epochs 2``.
"""

from __future__ import annotations

from dataclasses import fields

from common.cli import ConfigError
from pretrain.config import PretrainConfig
from pretrain.methods import method_class, method_options

# small heads for short CPU runs (each method takes the sizes it has)
SMALL_HEADS = {
    "proj_hidden": 512,
    "proj_dim": 128,
    "pred_hidden": 512,
    "mid_dim": 128,
    "n_blocks": 2,
    "mph_dim": 128,
}

DEMO = {
    "arch": "resnet50",
    "epochs": 3,
    "batch_size": 16,
    "image_size": 64,
    "crop_scale": (0.3, 1.0),
    "warmup_epochs": 0.5,
    "workers": 0,
    "knn_every": 3,
    "save_every": 1,
    "log_every": 5,
}

# lightly's CIFAR-10 benchmark as GSG B.2 / C.2 follow it (docs/methods.md, CIFAR): the CIFAR
# ResNet-18, SimCLR-style views without blur, SGD 0.06 (momentum 0.9, wd 5e-4) with a cosine
# per epoch and no warmup, EMA 0.99 constant, GSG C.2's heads, the kNN monitor every epoch
# (k 200, T 0.1, the 32 px images as they are) and the online probe recorded under
# output/pretrain_knn.
CIFAR = {
    "arch": "resnet18_cifar",
    "epochs": 200,
    "batch_size": 512,
    "image_size": 32,
    "aug": "cifar",
    "crop_scale": (0.08, 1.0),
    "base_lr": 0.06,
    "lr_batch_ref": 128,  # BYOL's 0.06 x batch / 128; the SimSiam family below: unscaled
    "weight_decay": 5e-4,
    "momentum": 0.9,
    "warmup_epochs": 0.0,
    "lr_schedule": "epoch",
    "fix_pred_lr": False,
    "base_tau": 0.99,
    "tau_schedule": "constant",
    "knn_every": 1,
    "knn_k": (200,),
    "knn_temperature": 0.1,
    "eval_resize": False,
    # ours (not lightly's): the online linear probe as solo-learn's CIFAR numbers are; the
    # pretrained weights are bit-identical with it, and it fills the cifar table's columns
    "online_probe": True,
    "save_every": 10,
    "results": "output",
    "options": {
        "proj_hidden": 2048,
        "proj_dim": 2048,
        "pred_hidden": 512,
        "proj_layers": 2,
        "proj_last_affine": True,
        "zero_init": False,
        # lightly's BYOL loss, 0.5 (-cos - cos); the SimSiam family and both BYOL-GSG
        # variants already take this form
        "byol_loss": "lightly",
    },
    # lightly's SimSiam: "no lr-scaling, results in better training stability"
    "per_method": {m: {"lr_batch_ref": 0} for m in ("simsiam", "simsiam_gsg")},
}

RECIPES: dict[str, dict] = {
    # The papers' ImageNet runs: 200 epochs, 128 images per GPU (CARE: 8 GPUs = 1024), each
    # method's paper defaults otherwise. Needs --data.
    "imagenet": {"epochs": 200, "batch_size": 128},
    # MaskCo supp. A.2 / Table 2: MaskCo on COCO's unlabelled train2017 (--data the folder)
    # with its ImageNet settings (the paper's 32 images per GPU), without the mask prediction
    # head; --no-mask for the table's other row
    "maskco-coco": {
        "method": "maskco",
        "epochs": 200,
        "batch_size": 32,
        "options": {"mph": False},
    },  # fmt: skip
    # CIFAR (GSG B.2 / C.2 = lightly's benchmark); --data the CIFAR folder
    "cifar10": {**CIFAR, "dataset": "cifar10"},
    "cifar100": {**CIFAR, "dataset": "cifar100"},
    # the CIFAR recipe on the synthetic pickled twin, in seconds on a CPU (tests, demo)
    "cifar-smoke": {
        **CIFAR,
        "dataset": "cifar10",
        "epochs": 2,
        "batch_size": 32,
        "workers": 0,
        "save_every": 1,
        "log_every": 1,
    },  # fmt: skip
    # `make pretrain` without DATA: synthetic shapes on a 2-core CPU in minutes.
    "shapes-cpu": {
        "epochs": 5,
        "batch_size": 32,
        "image_size": 64,
        "crop_scale": (0.3, 1.0),
        "warmup_epochs": 1.0,
        "workers": 2,
        "knn_every": 5,
        "save_every": 5,
    },
    # `make demo`: three short epochs of a ResNet-50 on the demo's shapes.
    "demo": DEMO,
    # the smallest demo (its test)
    "demo-tiny": {**DEMO, "epochs": 1, "batch_size": 8, "image_size": 32, "knn_every": 1},
    # Does a method learn? (pretrain.learning_signal): ResNet-18 on 32 px silhouette crops.
    # EMA 0.9: the target's time constant must be short as the run is (360 steps).
    "learning-signal": {
        "arch": "resnet18",
        "epochs": 30,
        "batch_size": 32,
        "image_size": 32,
        "base_lr": 0.5,
        "warmup_epochs": 0.0,
        "crop_scale": (0.5, 1.0),
        "aug": "crop",
        "base_tau": 0.9,
        "workers": 0,
        "knn_every": 30,
        "save_every": 30,
        "log_every": 1000,
        "options": SMALL_HEADS,
    },
    # unit / resume tests: seconds per run on a CPU
    "test": {
        "arch": "resnet18",
        "epochs": 2,
        "batch_size": 8,
        "image_size": 32,
        "crop_scale": (0.3, 1.0),
        "warmup_epochs": 0.5,
        "workers": 0,
        "knn_every": 1,
        "save_every": 1,
        "log_every": 1,
        "synthetic_size": 48,
        "synthetic_per_class": 4,
        "options": {
            "proj_hidden": 64,
            "proj_dim": 16,
            "pred_hidden": 64,
            "mid_dim": 64,
            "n_blocks": 2,
            "mph_dim": 32,
        },
    },
}


def recipe_config(
    name: str | None = None, method: str | None = None, options: dict | None = None, **overrides
) -> PretrainConfig:
    """A ``PretrainConfig`` from recipe ``name`` (None = plain defaults) and ``overrides``.
    ``method``: given, it wins; else the recipe's own method (``maskco-coco``), else CARE.

    ``options`` are method option values given explicitly (strict: each must be an option of
    ``method``); the recipe's own ``options`` apply where the method has that option.
    """
    if name is not None and name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    recipe = dict(RECIPES.get(name, {}))
    known = {f.name for f in fields(PretrainConfig)}
    bad = sorted((set(recipe) | set(overrides)) - known - {"per_method"})
    if bad:
        raise ConfigError(f"unknown setting(s) {', '.join(bad)}")
    method = overrides.pop("method", None) or method or recipe.pop("method", None) or "care"
    recipe.pop("method", None)
    recipe.update(recipe.pop("per_method", {}).get(method, {}))
    has = {f.name for f in fields(method_class(method).Options)}
    values = {k: v for k, v in recipe.pop("options", {}).items() if k in has}
    method_options(method, options, strict=True)  # names a foreign option
    values.update(options or {})
    return PretrainConfig(
        **{**recipe, **overrides, "method": method, "recipe": name, "options": values}
    )
