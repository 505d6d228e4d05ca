"""A finished pretraining run's kNN monitor (and online probe) as a seed folder the tables
read (``--results``).

Layout (the recognition families' per-dataset layout)::

    <results>/pretrain_knn/<method>_<arch>_e<epochs>_b<global batch>/<dataset>/seed<seed>/
        config.yaml     the run's settings, less the seed and what may change on resume
        metrics.json    written last: {"protocol": "pretrain_knn", "seed", "dataset",
                        "knn": {top1_k200, best_top1_k200, best_epoch_k200, ...},
                        "probe": {top1, best_top1, best_epoch, lr, views, schedule}
                        (with --online-probe), ...}

Seeds of one setting share the run folder; a finished seed of other settings already at that
place is kept, and the new one goes to ``<run>-<hash of its settings>``. ``dataset`` in the
folder name is the data the run read (cifar10 / cifar100, or the
ImageFolder's name); ``metrics.json``'s ``dataset`` is ``synthetic`` for the synthetic twins,
so the tables put those runs in rows marked "(synthetic)".
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from common.atomic import atomic_write_json, atomic_write_text
from common.checkpoints import file_sha256
from common.imagesets import find_cifar

PROTOCOL = "pretrain_knn"
# the tables' row names (the papers' spelling)
DISPLAY = {
    "care": "CARE",
    "byol": "BYOL",
    "simsiam": "SimSiam",
    "simsiam_gsg": "SimSiam-GSG",
    "byol_gsg": "BYOL-GSG",
    "byol_gsgpaper": "BYOL (GSG paper)",
    "maskco": "MaskCo",
}
SYNTHETIC_STAMPS = ("cifar.json", "shapes.json")  # written beside the synthetic twins


def data_identity(data: str | None, dataset: str | None) -> tuple[str, bool]:
    """(dataset folder name, synthetic?) of a run's ``--data`` / ``--dataset``."""
    if data is None:
        return dataset or "shapes", True
    root = Path(data)
    found = find_cifar(root, dataset)
    if found is not None:
        name, folder = found
        synthetic = any(
            (p / s).is_file() for p in (folder, folder.parent) for s in SYNTHETIC_STAMPS
        )
        return name, synthetic
    synthetic = any((p / s).is_file() for p in (root, root.parent) for s in SYNTHETIC_STAMPS)
    return root.name or "data", synthetic


def run_name(config: dict, global_batch: int) -> str:
    """``<method>_<arch>_e<epochs>_b<global batch>``: the row a run's seeds share."""
    return f"{config['method']}_{config['arch']}_e{config['epochs']}_b{global_batch}"


def write_knn_seed(
    results: str | Path,
    config: dict,
    knn: dict[str, float],
    checkpoint: Path,
    global_batch: int,
    free_keys: set[str],
    probe: dict[str, float] | None = None,
) -> Path | None:
    """Write the seed folder of one finished run (``knn``: its ``knn_summary``; ``probe``:
    its online probe's ``probe_summary`` with the probe's settings); None when the run had
    neither."""
    if not knn and not probe:
        return None
    name, synthetic = data_identity(config.get("data"), config.get("dataset"))
    kept = {k: v for k, v in config.items() if k not in free_keys | {"seed", "data", "knn_data"}}
    text = yaml.safe_dump(kept, sort_keys=True)
    run = run_name(config, global_batch)
    seed_dir = Path(results) / PROTOCOL / run / name / f"seed{config['seed']}"
    if (seed_dir / "config.yaml").is_file() and (seed_dir / "config.yaml").read_text() != text:
        # another run with other settings finished there: keep it, file this one apart
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        seed_dir = Path(results) / PROTOCOL / f"{run}-{digest}" / name / f"seed{config['seed']}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(seed_dir / "config.yaml", text)
    metrics = {
        "protocol": PROTOCOL,
        "family": "pretrain",
        "seed": config["seed"],
        "dataset": "synthetic" if synthetic else name,
        "arch": config["arch"],
        "knn": {k.removeprefix("knn/"): v for k, v in knn.items()},
        **({"probe": probe} if probe else {}),
        "checkpoint": {"path": str(checkpoint.resolve()), "sha256": file_sha256(checkpoint)},
        "weights": {
            "meta": {
                "method": DISPLAY.get(config["method"], config["method"]),
                "method_key": config["method"],
                "arch": config["arch"],
                "epochs": config["epochs"],
                "batch": global_batch,
                "options": config.get("options", {}),
            }
        },
    }
    atomic_write_json(seed_dir / "metrics.json", metrics)  # last: the seed is finished
    return seed_dir
