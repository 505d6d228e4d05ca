"""Which runner runs a protocol, and the work one seed of it does.

``RUNNERS[protocol]``: the ``transfer/run_*.py`` module and its fixed arguments. ``seed_work``:
the phases of one seed (images through the network, and the throughput record that times
them) from the protocol's own config (detectron2 YAML, classification / recognition
protocol) with the entry's ``KEY VALUE`` overrides applied, so a shortened run costs what it
runs. Evaluation passes are not counted (a few percent of a detection seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from common.cli import ConfigError


@dataclass(frozen=True)
class Runner:
    module: str  # transfer.<module>
    args: tuple[str, ...]  # fixed arguments selecting the protocol
    family: str  # detection | segmentation | classification | recognition


_DETECTION = {
    "voc_c4_24k": ("run_voc", ("--arch", "c4")),
    "voc_fpn_144k": ("run_voc", ("--arch", "fpn")),
    "coco_c4_1x": ("run_coco", ("--arch", "c4", "--schedule", "1x")),
    "coco_c4_2x": ("run_coco", ("--arch", "c4", "--schedule", "2x")),
    "coco_fpn_1x": ("run_coco", ("--arch", "fpn", "--schedule", "1x")),
    "coco_fpn_3x": ("run_coco", ("--arch", "fpn", "--schedule", "3x")),
}
_CLASSIFICATION = ("linear_care", "linear_moco", "linear_multilayer", "knn", "semisup_1pct",
                   "semisup_10pct")  # fmt: skip
_RECOGNITION = ("manyshot_linear", "manyshot_finetune", "fewshot")

RUNNERS: dict[str, Runner] = {
    **{p: Runner(m, a, "detection") for p, (m, a) in _DETECTION.items()},
    **{p: Runner("run_linear", ("--protocol", p), "classification") for p in _CLASSIFICATION},
    **{p: Runner("run_recognition", ("--protocol", p), "recognition") for p in _RECOGNITION},
    "ade20k_upernet": Runner("run_segmentation", (), "segmentation"),
    "ade20k_upernet_ignorepad": Runner("run_segmentation", ("--ignore-padding",), "segmentation"),
}

# ImageNet's train / val images and SimCLR's label subsets (1percent.txt, 10percent.txt)
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
SEMISUP_IMAGES = {"semisup_1pct": 12_811, "semisup_10pct": 128_116}
# Images per dataset as ssl-transfer reads them (all splits; Caltech101 with the deduplicated
# train.txt), and classes. VOC2007: 20 binary fits per C. None: not recorded here.
DATASET_IMAGES: dict[str, tuple[int | None, int]] = {
    "aircraft": (3334 + 3333 + 3333, 100), "caltech101": (2416 + 6669, 102),
    "cars": (8144 + 8041, 196), "cifar10": (50000 + 10000, 10), "cifar100": (50000 + 10000, 100),
    "dtd": (1880 * 3, 47), "flowers": (1020 * 2 + 6149, 102), "food": (75750 + 25250, 101),
    "pets": (3680 + 3669, 37), "sun397": (19850 + 19850, 397), "voc2007": (2501 + 2510 + 4952, 20),
    "eurosat": (27000, 10), "isic": (10015, 7), "cropdiseases": (None, 38), "chestx": (None, 7),
}  # fmt: skip


@dataclass(frozen=True)
class Phase:
    """Part of a seed's work: ``images`` through the network, timed by record ``rate_key``."""

    name: str  # train | features | fine-tuning
    rate_key: str
    images: int | None  # None: unknown (a dataset whose size is not recorded)
    work: str = ""  # how the images add up, e.g. "24000 it x 16", "80 ep x 1281167"


def count(n: int) -> str:
    """``1281167`` -> ``1.28M``, ``12811`` -> ``12.8k``, ``5640`` -> ``5640``."""
    if n >= 1_000_000:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}k" if n >= 10_000 else str(n)


def runner_for(protocol: str) -> Runner:
    if protocol not in RUNNERS:
        raise ConfigError(
            f"protocol {protocol!r} has no transfer runner (known: {', '.join(RUNNERS)}); "
            "pretraining protocols (pretrain_knn) run with python -m pretrain"
        )
    return RUNNERS[protocol]


def _opts_dict(opts: list[str]) -> dict[str, str]:
    return dict(zip(opts[::2], opts[1::2]))


def _yaml_solver(path: Path) -> dict:
    """SOLVER's MAX_ITER / IMS_PER_BATCH of a detectron2 YAML, following its _BASE_ chain."""
    cfg = yaml.safe_load(path.read_text()) or {}
    solver = {}
    if "_BASE_" in cfg:
        solver = _yaml_solver(path.parent / cfg["_BASE_"])
    solver.update({k: v for k, v in (cfg.get("SOLVER") or {}).items()
                   if k in ("MAX_ITER", "IMS_PER_BATCH")})  # fmt: skip
    return solver


def _detectron2_work(protocol: str, smoke: bool, opts: dict) -> list[Phase]:
    from transfer.detection import config as det
    from transfer.segmentation import config as seg

    family = seg if protocol.startswith("ade20k") else det
    solver = _yaml_solver(family.config_path(protocol.removesuffix("_ignorepad")))
    if smoke:
        solver.update(_yaml_solver(family.SMOKE_OVERLAY))
    iters = int(opts.get("SOLVER.MAX_ITER", solver["MAX_ITER"]))
    batch = int(opts.get("SOLVER.IMS_PER_BATCH", solver["IMS_PER_BATCH"]))
    key = protocol.removesuffix("_ignorepad") + ("_smoke" if smoke else "")
    return [Phase("train", key, iters * batch, f"{iters} it x {batch}")]


def _classification_work(protocol: str, smoke: bool, opts: list[str]) -> list[Phase]:
    from transfer.classification.protocols import resolve

    p = resolve(protocol, smoke, opts)
    key = p.name
    if smoke:  # the synthetic ImageFolder's size is the user's choice: not planned
        return [Phase("train", key, None, f"{p.epochs} ep" if p.epochs else "1 pass")]
    if p.kind == "knn":
        return [Phase("features", key, IMAGENET_TRAIN + IMAGENET_VAL, "1 x 1.33M")]
    n = SEMISUP_IMAGES.get(protocol, IMAGENET_TRAIN)
    return [Phase("train", key, p.epochs * n, f"{p.epochs} ep x {count(n)}")]


def _recognition_work(protocol: str, dataset: str, smoke: bool, opts: list[str]) -> list[Phase]:
    from transfer.recognition.protocols import resolve

    p = resolve(protocol, smoke, opts)
    images = None if smoke else DATASET_IMAGES.get(dataset, (None, 0))[0]
    key = "feature_extraction" + ("_smoke" if smoke else "")
    if p.kind == "manyshot_finetune":
        runs = p.grid_size * (p.grid_size + 1) + 1  # the grid, then the best retrained
        ft = None if smoke else runs * p.steps * p.batch_size
        work = f"{runs}x{p.steps} it x {p.batch_size}"
        return [Phase("fine-tuning", "finetune_step" + ("_smoke" if smoke else ""), ft, work)]
    return [Phase("features", key, images, "1 pass" if images is None else f"1 x {count(images)}")]


def seed_work(protocol: str, dataset: str | None, opts: list[str], smoke: bool) -> list[Phase]:
    """The phases of one seed of ``protocol`` (on ``dataset`` for recognition) with the
    ``KEY VALUE`` overrides ``opts``; ``smoke``: its synthetic-data variant."""
    family = runner_for(protocol).family
    if family in ("detection", "segmentation"):
        return _detectron2_work(protocol, smoke, _opts_dict(opts))
    if family == "classification":
        return _classification_work(protocol, smoke, opts)
    return _recognition_work(protocol, dataset or "", smoke, opts)
