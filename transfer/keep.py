"""What a finished seed keeps of its checkpoints (``--keep-checkpoints``).

A seed's resumable checkpoints hold the optimiser's state besides the weights (a detection or
segmentation R50: 265-513 MB each), which nothing reads once ``metrics.json`` is written.

- ``all``: every checkpoint as written (resumable states, periodic and final);
- ``final`` (default): the final weights only: detectron2's ``model_final.pth`` as
  ``{"model", "iteration"}`` (``DetectionCheckpointer`` loads it), the classification
  ``checkpoint.pth`` as its trained ``head`` (and ``backbone`` when fine-tuned), ``epoch`` and
  ``history``; the periodic ``model_<iter>.pth`` are removed;
- ``none``: no checkpoint (the metrics, logs and predictions stay).

Called by a seed right after it writes ``metrics.json`` (the main process only).
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.atomic import atomic_torch_save, atomic_write_text

KEEP_CHOICES = ("all", "final", "none")
D2_FINAL = "model_final.pth"
D2_POINTER = "last_checkpoint"  # detectron2's name of the newest checkpoint
CLS_CHECKPOINT = "checkpoint.pth"
CLS_WEIGHTS = ("head", "backbone", "epoch", "history", "protocol")


def prune_seed_checkpoints(seed_dir: str | Path, keep: str) -> int:
    """Apply ``keep`` to the finished seed in ``seed_dir``; returns the bytes freed."""
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep_checkpoints {keep!r}: one of {', '.join(KEEP_CHOICES)}")
    seed_dir = Path(seed_dir)
    if keep == "all":
        return 0
    before = _size(seed_dir)
    periodic = [p for p in seed_dir.glob("model_*.pth") if p.name != D2_FINAL]
    for path in periodic:
        path.unlink()
    final, cls = seed_dir / D2_FINAL, seed_dir / CLS_CHECKPOINT
    if keep == "none":
        for path in (final, cls, seed_dir / D2_POINTER):
            path.unlink(missing_ok=True)
    else:
        if final.is_file():
            state = torch.load(final, map_location="cpu", weights_only=False)
            atomic_torch_save(final, {k: state[k] for k in ("model", "iteration") if k in state})
            atomic_write_text(seed_dir / D2_POINTER, D2_FINAL)
        if cls.is_file():
            state = torch.load(cls, map_location="cpu", weights_only=False)
            atomic_torch_save(cls, {k: state[k] for k in CLS_WEIGHTS if k in state})
    return before - _size(seed_dir)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.pth") if p.is_file())
