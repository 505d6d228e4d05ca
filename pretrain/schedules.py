"""Per-step schedules (CARE / BYOL, docs/methods.md, CARE)."""

from __future__ import annotations

import math


def lr_at(step: int, total: int, warmup: int, base_lr: float, start_lr: float = 1e-6) -> float:
    """Linear warmup from ``start_lr`` to ``base_lr`` over ``warmup`` steps, then cosine
    decay to 0 at ``total`` steps."""
    if step < warmup:
        return start_lr + (base_lr - start_lr) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def momentum_at(step: int, total: int, base: float = 0.99) -> float:
    """Target EMA momentum ``1 - (1 - base) (cos(pi k / K) + 1) / 2``: base at 0, 1 at K."""
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total) / max(1, total)) + 1) / 2
