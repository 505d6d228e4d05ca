"""``SeedSpec``: everything one seed's process needs, typed, JSON round-trippable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SeedSpec:
    """One seed of one protocol for one weights file (written by the runner's plan)."""

    protocol: str  # e.g. voc_c4_24k, linear_care
    protocol_name: str  # the results folder's name: protocol, or protocol_smoke
    smoke: bool
    dataset: str  # real | synthetic
    shapes_root: str | None  # the synthetic data (smoke); segmentation: the data root
    weights: str  # a Detectron2 .pkl, "" = random initialisation
    weights_info: dict  # stem, source, sha256, meta (recorded in metrics.json)
    seed_index: int
    seed: int  # the recorded seed value
    seed_dir: str
    opts: list = field(default_factory=list)  # KEY VALUE config / protocol overrides
    num_gpus: int = 0  # GPUs per machine, one process each; 0: CPU
    num_procs: int = 1  # CPU only: processes per machine (gloo)
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"
    amp: bool = False
    device: str = "cpu"
    family: str = "detection"  # detection | classification | recognition (records, tables)
    entry: str = ""  # the family's per-process function, "module:function"
    data: str | None = None  # classification: the ImageNet-layout root
    arch: str | None = None  # classification with random init: the ResNet to build
    subset_file: str | None = None  # semi-supervised: SimCLR's subset file
    allow_pickle: bool = False
    task: str | None = None  # recognition: the downstream dataset (aircraft, ..., voc2007)
    cache_dir: str | None = None  # recognition: where extracted features are cached
    logger: str = "tensorboard"  # tensorboard | wandb | none, beside train_metrics.jsonl
    keep_checkpoints: str = "final"  # what a finished seed keeps (transfer.keep)

    @property
    def procs_per_machine(self) -> int:
        """Worker processes on each machine: one per GPU, or ``num_procs`` on CPU."""
        return self.num_gpus if self.num_gpus > 0 else max(1, self.num_procs)

    def wandb_names(self) -> dict:
        """W&B's group (the weights file) and run name (protocol[/task]/seed) of this seed."""
        task = f"/{self.task}" if self.task else ""
        return {
            "group": self.weights_info.get("stem") or "random",
            "name": f"{self.protocol_name}{task}/seed{self.seed_index}",
        }

    def metrics_log(self, resume: int | None, folder: str | None = None, part: str = ""):
        """This seed's ``train_metrics.jsonl`` + TensorBoard (+ W&B) writer, truncated to
        ``resume`` (the iteration it continues from; None: a fresh start). ``part``: a
        sub-run of the seed (a fine-tuning grid run), appended to the W&B run name."""
        from common.metrics import MetricsLog

        names = self.wandb_names()
        if part:
            names["name"] = f"{names['name']}/{part}"
        return MetricsLog(
            folder or self.seed_dir,
            resume=resume,
            logger=self.logger,
            config=self.to_json(),
            **names,
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> SeedSpec:
        return cls(**d)

    def replace(self, **changes) -> SeedSpec:
        return dataclasses.replace(self, **changes)


def seed_lock_path(seed_dir: str | Path) -> Path:
    """The lock a launcher holds while seed ``seed_dir`` runs (beside the folder, so a
    seed folder's content stays the seed's)."""
    seed_dir = Path(seed_dir)
    return seed_dir.with_name(f"{seed_dir.name}.lock")
