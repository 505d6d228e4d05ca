"""One metrics scheme for every long-running command: JSON lines, TensorBoard, W&B.

Each record is one JSON line ``{"iteration": i, ["epoch": e,] key: value, ...}`` with
detectron2's slash-namespaced keys (``train/loss``, ``lr``, ``knn/top1_k20``,
``eval/top1``, ``bbox/AP50``), and every numeric value is also a TensorBoard scalar at step
``i`` in the run folder's event files (``tensorboard --logdir output`` finds every run under
it). ``--logger wandb`` logs the same keys to Weights & Biases as well (one W&B group per
checkpoint, one run per protocol and seed); ``--logger none`` keeps the JSON lines only.

A resumed run does not duplicate points: the writer truncates to the resume point. The JSON
lines after the resumed iteration are dropped when the log opens, and TensorBoard is told
to purge the events from the next step on (``SummaryWriter(purge_step=...)``), so readers
need no de-duplication. W&B drops steps below the run's last one by itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

LOGGERS = ("tensorboard", "wandb", "none")
EVENTS_GLOB = "events.out.tfevents.*"


def truncate_jsonl(path: Path, resume: int | None) -> None:
    """Keep the lines of ``path`` with iteration <= ``resume`` (none for a fresh run)."""
    if not path.exists():
        return
    if resume is None:
        path.unlink()
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: redone after the resume point
            continue
        if int(rec.get("iteration", -1)) <= resume:
            kept.append(line + "\n")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def scalars_of(record: dict) -> dict[str, float]:
    """The finite numeric values of a record, nested dicts flattened with '/'."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update({f"{k}/{kk}": vv for kk, vv in scalars_of(v).items()})
        elif isinstance(v, bool):
            continue
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
    return out


def wandb_run_id(folder: Path) -> str:
    """A stable W&B run id for a run folder, so a resumed run continues the same W&B run."""
    return hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]


class MetricsLog:
    """The metrics of one run folder. Open it on the main process only.

    ``resume``: the iteration of the state the run continues from (None: a fresh run, whose
    earlier lines and event files are removed). ``group`` / ``name`` / ``config`` name the
    W&B run (``--logger wandb``).
    """

    def __init__(
        self,
        folder: str | Path,
        filename: str = "train_metrics.jsonl",
        *,
        resume: int | None = None,
        logger: str = "tensorboard",
        group: str | None = None,
        name: str | None = None,
        config: dict | None = None,
    ):
        if logger not in LOGGERS:
            raise ValueError(f"--logger {logger!r}: choose one of {', '.join(LOGGERS)}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / filename
        truncate_jsonl(self.path, resume)
        self.tb = None
        self.wandb = None
        if logger in ("tensorboard", "wandb"):
            from torch.utils.tensorboard import SummaryWriter

            if resume is None:
                remove_events(self.folder)
            self.tb = SummaryWriter(
                str(self.folder), purge_step=None if resume is None else resume + 1
            )
        if logger == "wandb":
            self.wandb = wandb_run(self.folder, group, name, config)

    def write(self, scalars: dict, iteration: int, epoch: int | None = None) -> dict:
        """Append one record; returns it (``iteration``, ``epoch`` and the values)."""
        rec = {"iteration": int(iteration)}
        if epoch is not None:
            rec["epoch"] = int(epoch)
        rec.update(scalars)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        values = {k: v for k, v in scalars_of(scalars).items()}
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, int(iteration))
        if self.wandb is not None:
            self.wandb.log(values | ({"epoch": epoch} if epoch is not None else {}), step=iteration)
        return rec

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove_events(folder: Path) -> None:
    """Delete a fresh run's leftover TensorBoard event files (a run started over)."""
    for old in Path(folder).glob(EVENTS_GLOB):
        old.unlink()


def wandb_run(folder: Path, group: str | None, name: str | None, config: dict | None):
    """A W&B run for a run folder (resumed when the folder's run exists), console capture
    off: the run's log.txt keeps the console."""
    try:
        import wandb
    except ImportError as e:
        raise ImportError(
            "--logger wandb needs the wandb package: pip install -e '.[wandb]' "
            "(or use --logger tensorboard)"
        ) from e
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "care-suite"),
        group=group,
        name=name,
        config=config,
        dir=str(folder),
        id=wandb_run_id(folder),
        resume="allow",
        reinit="create_new",
        settings=wandb.Settings(console="off"),
    )


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a metrics file (a line cut by a kill is left out)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_events(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars of a run folder, {tag: [(step, value), ...]}, via TensorBoard's
    own reader (purged steps already dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
