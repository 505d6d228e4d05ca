"""``PretrainConfig``: every setting of a pretraining run, defined once.

Defaults and help text live on the fields (``common.flags.opt``); ``python -m pretrain``'s
flags are generated from them, and named recipes (``pretrain.recipes``) are overrides of
them. ``None`` means "the method's paper value" (``Method.train_defaults``), filled in on
construction; ``options`` holds the method's own options (``Method.Options``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from common.archs import ARCHS, get_arch
from common.cli import ConfigError, InputNotFound
from common.flags import opt
from common.imagesets import Split, cifar_split, find_cifar, flat_split, list_split
from common.metrics import LOGGERS
from pretrain.base import HeadSizes
from pretrain.data import AUGMENTATIONS, LAYOUT_HELP, as_split
from pretrain.methods import METHODS, method_class, method_options

# config keys that may change between a run and its resumption
RESUME_FREE_KEYS = {
    "workers",
    "batch_aug",
    "cuda_graph",
    "knn_every",
    "save_every",
    "keep_checkpoints",
    "log_every",
    "out",
    "output",
    "resume",
    "max_bad_frac",
    "knn_limit_per_class",
    "stop_after_steps",
    "recipe",
    "logger",
    "online_probe",
    "probe_lr",
    "probe_views",
    "probe_schedule",
    "results",
}


@dataclass
class PretrainConfig:
    """Every setting of a run (see the module docstring)."""

    method: str = opt("care", "method", choices=tuple(sorted(METHODS)))
    arch: str = opt(
        "resnet50", "backbone (resnet50x2 = torchvision wide_resnet50_2)", choices=tuple(ARCHS)
    )
    data: str | None = opt(
        None,
        "training images: an ImageFolder root with train/<class>/ (and val/<class>/ for "
        "the kNN probe), e.g. ImageNet; a CIFAR folder (cifar-10-batches-py/ or "
        "cifar-100-python/, or one holding it: test split = kNN queries); a folder of "
        "unlabelled images, searched recursively (COCO train2017/); or a text file listing "
        "image paths; default: synthetic shapes",
    )
    dataset: str | None = opt(
        None,
        "the CIFAR release to read where --data holds both (cifar10 / cifar100; the CIFAR "
        "recipes set it); without --data it names the synthetic twin to write",
        choices=(None, "cifar10", "cifar100"),
    )
    knn_data: str | None = opt(
        None,
        "labelled data for the kNN / online probes when --data has no labels (an ImageFolder "
        "root with train/ and val/, or a CIFAR folder); default: --data's own labels",
    )
    output: str = opt(
        "runs/pretrain", "run folder: checkpoint.pth, metrics.jsonl, config.json, curves.png"
    )
    out: str | None = opt(None, "final checkpoint (default: <output>/<method>_<arch>.pth)")
    epochs: int = opt(100, "epochs (papers: 100 for ablations, 200 / 400 main)")
    batch_size: int = opt(128, "images per GPU / process (CARE: 1024 over 8 GPUs = 128)")
    base_lr: float | None = opt(
        None, "lr = base_lr x global batch / --lr-batch-ref (per method: 0.05; MaskCo 0.03)"
    )
    lr_batch_ref: int = opt(
        256,
        "the batch at which lr = base_lr (linear scaling); 0 = no scaling (lightly's CIFAR "
        "SimSiam: 0.06 at any batch; its BYOL: 0.06 x batch / 128)",
    )
    weight_decay: float = opt(1e-4, "SGD weight decay")
    momentum: float = opt(0.9, "SGD momentum")
    warmup_epochs: float | None = opt(
        None,
        "linear warmup from --start-lr, then cosine (per method: CARE / BYOL 10, SimSiam family 0)",
    )
    start_lr: float = opt(1e-6, "warmup start lr")
    base_tau: float | None = opt(
        None, "target EMA momentum at step 0 (per method: 0.99; MaskCo 0.999)"
    )
    tau_schedule: str | None = opt(
        None,
        "EMA momentum: cosine to 1 (CARE / BYOL) or constant (BYOL-GSG, MaskCo); per method",
        choices=("cosine", "constant"),
    )
    lr_schedule: str | None = opt(
        None,
        "when the cosine lr is updated: every step (CARE / BYOL official code) or once per "
        "epoch (the SimSiam family's official code); per method",
        choices=("step", "epoch"),
    )
    image_size: int = opt(224, "crop size in pixels")
    crop_interpolation: str = opt(
        "bilinear",
        "RandomResizedCrop's resize: bilinear (torchvision's default, the official CARE and "
        "GSG pipelines) or bicubic",
        choices=("bilinear", "bicubic"),
    )
    crop_scale: tuple[float, float] | None = opt(
        None,
        "RandomResizedCrop area range (per method: 0.08 1.0 BYOL / CARE, 0.2 1.0 "
        "SimSiam family); small synthetic images need a larger MIN",
        metavar=("MIN", "MAX"),
    )
    aug: str | None = opt(
        None,
        "augmentations: byol (asymmetric blur / solarize), simsiam, or "
        "crop (crops and flips only: short runs on synthetic silhouettes); "
        "per method. Blur sigma scales with --image-size / 224",
        choices=tuple(AUGMENTATIONS),
    )
    fix_pred_lr: bool | None = opt(
        None, "keep the predictor's lr at the base value (per method: on for the SimSiam family)"
    )
    amp: str = opt(
        "auto",
        "mixed precision: auto = bf16 on CUDA, none on CPU (CARE's code: fp16)",
        choices=("auto", "bf16", "fp16", "none"),
    )
    batch_aug: str = opt(
        "auto",
        "decode (nvjpeg on CUDA) and augment batched on the training "
        "device, the workers only read files and draw the random choices: "
        "auto = on with CUDA, except MaskCo (ours)",
        choices=("auto", "on", "off"),
    )
    channels_last: bool = opt(True, "channels_last memory format on CUDA (ours)")
    cuda_graph: str = opt(
        "off",
        "replay each step's forward + backward as one captured CUDA graph (ours; one "
        "process, CARE / BYOL / SimSiam, no --online-probe): auto = where it applies",
        choices=("auto", "on", "off"),
    )
    workers: int = opt(8, "data loader workers per process")
    seed: int = opt(0, "random seed")
    save_every: int = opt(10, "resumable checkpoint every N epochs")
    keep_checkpoints: str = opt(
        "final",
        "what a finished run keeps in <output>/checkpoint.pth: the whole resumable state "
        "(all: model, targets, optimiser) or the exported backbone and the run's history "
        "(final; a re-run still finds the run finished); the --out weights either way",
        choices=("all", "final"),
    )
    knn_every: int = opt(10, "kNN probe every N epochs, 0 = never")
    knn_k: tuple[int, ...] = opt((20, 200), "k of the kNN probe")
    knn_temperature: float = opt(0.07, "kNN vote temperature")
    knn_limit_per_class: int = opt(0, "bank images per class for the kNN probe (0 = all)")
    eval_resize: bool = opt(
        True,
        "probe features from images resized to size / 0.875 and centre-cropped; off: as they "
        "are (lightly's CIFAR kNN monitor)",
    )
    results: str | None = opt(
        None,
        "also record the finished run's kNN monitor (last and best epoch) as a seed of "
        "RESULTS/pretrain_knn/ for python -m tables (the cifar table; CIFAR recipes: output)",
    )
    online_probe: bool = opt(
        False,
        "online linear probe: a linear head trained on the detached pooled features of the "
        "labelled training batches, evaluated (probe/top1) when the kNN probe is (as "
        "solo-learn's online classifier); the pretrained weights are unchanged by it",
    )
    probe_lr: float = opt(
        0.1,
        "the online probe's SGD lr per 256 images (x global batch / 256, as solo-learn's "
        "classifier_lr; momentum 0.9, no weight decay)",
    )
    probe_views: str = opt(
        "all",
        "the views the probe trains on: every view the online backbone saw, the loss "
        "averaged (solo-learn, lightly), or the first only",
        choices=("all", "first"),
    )
    probe_schedule: str = opt(
        "main",
        "the probe's lr: scaled by the run's own lr schedule (warmup, cosine: solo-learn's "
        "classifier is in the main optimiser) or constant",
        choices=("main", "constant"),
    )
    log_every: int = opt(10, "a metrics.jsonl line every N steps")
    logger: str = opt(
        "tensorboard",
        "besides metrics.jsonl: TensorBoard events in the run folder (tensorboard), also "
        "Weights & Biases (wandb: pip install -e '.[wandb]'), or nothing else (none)",
        choices=LOGGERS,
    )
    max_bad_frac: float = opt(
        0.01, "fail when more than this fraction of an epoch's images is unreadable"
    )
    resume: str | None = opt(
        None, "checkpoint to resume (default: <output>/checkpoint.pth if present)"
    )
    stop_after_steps: int = opt(0, "stop with a resumable checkpoint after N steps (testing)")
    synthetic_size: int = opt(96, "side of the generated shapes images without --data (ours)")
    synthetic_per_class: int = opt(48, "generated training images per class without --data (ours)")
    recipe: str | None = opt(None, "the named recipe these settings started from (recorded)")
    options: HeadSizes | dict | None = field(default=None, metadata={"flags": False})

    def __post_init__(self):
        cls = method_class(self.method)
        for key, value in cls.train_defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.crop_scale = tuple(self.crop_scale)
        self.knn_k = tuple(self.knn_k)
        if self.options is None or isinstance(self.options, dict):
            self.options = method_options(self.method, self.options)
        elif not isinstance(self.options, cls.Options):
            raise ConfigError(
                f"--method {self.method} takes {cls.Options.__name__}, got "
                f"{type(self.options).__name__}"
            )
        self.options = self.options.with_defaults(
            cls.head_defaults, get_arch(self.arch).feature_dim
        )
        self._validate(cls)

    def _validate(self, cls) -> None:
        for f in fields(self):  # every setting with declared choices (its flag's choices)
            allowed = f.metadata.get("choices")
            if allowed is not None and getattr(self, f.name) not in allowed:
                raise ConfigError(
                    f"--{f.name.replace('_', '-')} {getattr(self, f.name)!r}: one of "
                    f"{', '.join(map(str, allowed))}"
                )
        if self.batch_aug == "on" and cls.needs_boxes:
            raise ConfigError(
                f"--batch-aug on: {self.method}'s views carry boxes and are made "
                "in the loader workers; use --batch-aug off (or auto)"
            )
        if self.batch_size < cls.min_batch:
            raise ConfigError(
                f"--method {self.method} needs --batch-size >= {cls.min_batch} "
                "per process: it pairs or contrasts images within the batch"
            )

    def to_json(self) -> dict:
        """A JSON-able dict of every setting (written as config.json and into checkpoints)."""
        return jsonable(asdict(self))


def jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def amp_dtype(amp: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on a device type ("cuda" / "cpu"); None = fp32."""
    if amp == "none" or (amp == "auto" and device_type != "cuda"):
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


@dataclass
class RunData:
    """What a run reads: the training split and, when labels allow, the probes' splits
    (``bank`` the kNN bank and probe training labels' source, ``query`` the evaluation
    images); ``note`` says why the probes are off when they are."""

    train: Split
    bank: Split | None
    query: Split | None
    note: str = ""


def data_splits(source: str | Path, cifar: str | None = None) -> tuple[Split, Split | None]:
    """(training split, evaluation split or None) of a --data / --knn-data value: a list
    file, a CIFAR folder (train / test; ``cifar`` picks the release where it holds both),
    an ImageFolder root (train/ [val/]) or a folder of unlabelled images (recursive)."""
    source = Path(source)
    if source.is_file():
        return list_split(source), None
    if not source.is_dir():
        raise InputNotFound(f"--data {source} does not exist; {LAYOUT_HELP}")
    if find_cifar(source, cifar) is not None:
        return cifar_split(source, "train", cifar), cifar_split(source, "test", cifar)
    if (source / "train").is_dir():
        val = source / "val"
        return as_split(source / "train"), (as_split(val) if val.is_dir() else None)
    return flat_split(source), None


def resolve_data(cfg: PretrainConfig) -> RunData:
    """The run's splits. Without --data, writes the synthetic shapes (or, with --dataset,
    the synthetic CIFAR twin) first."""
    if cfg.data is None and cfg.dataset is not None:
        from synthetic.cifar import write_cifar

        root = write_cifar(Path(cfg.output) / "synthetic_cifar", seed=cfg.seed)
    elif cfg.data is None:
        from synthetic import ShapesSpec, generate

        spec = ShapesSpec(
            seed=cfg.seed,
            size=cfg.synthetic_size,
            imagefolder={
                "train": cfg.synthetic_per_class,
                "val": max(4, cfg.synthetic_per_class // 3),
            },
            voc2007={"trainval": 1, "test": 1},
            voc2012={"trainval": 1},
            coco={"train2017": 1, "val2017": 1},
        )
        root = generate(Path(cfg.output) / "shapes", spec) / "imagefolder"
    else:
        root = Path(cfg.data)
    train, val = data_splits(root, cfg.dataset)
    if cfg.knn_data is not None:
        bank, query = data_splits(cfg.knn_data, cfg.dataset)
        if not bank.labelled or query is None:
            raise ConfigError(
                f"--knn-data {cfg.knn_data}: needs labelled train and test / val images (an "
                "ImageFolder root with train/<class>/ and val/<class>/, or a CIFAR folder)"
            )
        return RunData(train, bank, query)
    if train.labelled and val is not None:
        return RunData(train, train, val)
    why = "has no labels" if not train.labelled else "has no val/ (or test) split"
    return RunData(train, None, None, f"kNN probe off: --data {root} {why}; name a labelled "
                                      "folder with --knn-data")  # fmt: skip
