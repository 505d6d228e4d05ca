"""Batch normalisation over the global batch of every process, on GPUs and on CPUs.

``nn.SyncBatchNorm`` needs CUDA; ``GlobalBatchNorm`` is its CPU (gloo) counterpart, with the
same statistics: the per-channel sum, sum of squares and element count all-reduced with
autograd (``torch.distributed.nn``), so gradients flow through the global mean and variance,
and the running variance takes the global unbiased estimate. One process: plain BatchNorm.
``synchronise_norms(module, cuda)`` converts a model's BatchNorms to the one that runs where
the model runs; ``cpu_sync_norms(module)`` replaces the ``nn.SyncBatchNorm`` of a model built
for GPUs (detectron2's "SyncBN") for CPU processes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm over (N, C, *) whose training statistics cover every process's batch."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, *), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, *) -> (N, C, *)."""
        import torch.distributed as dist

        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = x.new_tensor([x.numel() // c])
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean * mean  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
                self.num_batches_tracked += 1
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def _global_copy(bn: _BatchNorm) -> GlobalBatchNorm:
    """A ``GlobalBatchNorm`` holding ``bn``'s own parameters and buffers (as torch's
    ``convert_sync_batchnorm`` does: a frozen parameter stays frozen, an optimiser built
    before still updates it)."""
    if bn.momentum is None:
        raise ValueError("GlobalBatchNorm needs a float momentum (cumulative averages unsupported)")
    g = GlobalBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        g.weight, g.bias = bn.weight, bn.bias
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(g, name, getattr(bn, name))
    g.train(bn.training)
    return g


def synchronise_norms(module: nn.Module, cuda: bool, keep_local: tuple[str, ...] = ()):
    """``module`` with every BatchNorm computing global-batch statistics: ``nn.SyncBatchNorm``
    on CUDA, ``GlobalBatchNorm`` on CPU (state copied), except in the submodules named in
    ``keep_local`` (dotted paths), whose BatchNorms keep per-process statistics."""
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) and not keep_local:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module) if cuda else _global_copy(module)
    for name, child in list(module.named_children()):
        inner = tuple(k[len(name) + 1 :] for k in keep_local if k.startswith(name + "."))
        if name not in keep_local:
            setattr(module, name, synchronise_norms(child, cuda, inner))
    return module


def cpu_sync_norms(module: nn.Module) -> tuple[nn.Module, int]:
    """``module`` with each ``nn.SyncBatchNorm`` replaced by a ``GlobalBatchNorm`` (same
    statistics, runs on gloo); returns it and how many were replaced."""
    if isinstance(module, nn.SyncBatchNorm):
        return _global_copy(module), 1
    n = 0
    for name, child in list(module.named_children()):
        new, k = cpu_sync_norms(child)
        if new is not child:
            setattr(module, name, new)
        n += k
    return module, n
