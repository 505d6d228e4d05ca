"""Decisions that every rank of a torch.distributed group must take alike.

A rank that skips a step, stops or saves while the others do not leaves them waiting in a
collective forever; each such decision goes through one all-reduce here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _reduce(value: bool, device, op) -> bool:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bool(value)
    t = torch.tensor([1.0 if value else 0.0], device=device)
    dist.all_reduce(t, op=op)
    return bool(t.item() > 0)


def any_rank(value: bool, device="cpu") -> bool:
    """True on every rank when ``value`` is True on at least one (a stop request)."""
    return _reduce(value, device, dist.ReduceOp.MAX)


def every_rank(value: bool, device="cpu") -> bool:
    """True on every rank only when ``value`` is True on all (each rank has a batch)."""
    return _reduce(value, device, dist.ReduceOp.MIN)


def world() -> tuple[int, int]:
    """(rank, world size) of this process's group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
