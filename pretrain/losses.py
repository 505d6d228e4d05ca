"""Losses as pure functions (CARE s. 3, BYOL; docs/methods.md, CARE). Inputs are (N, D) tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised MSE per sample, ``2 - 2 cos(p, z)``: (N, D), (N, D) -> (N,).

    ``z`` is a target: the caller passes it detached (or from a no-grad network).
    """
    return 2 - 2 * (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(-1)


def symmetric_byol_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
) -> torch.Tensor:
    """``mean(4 - 2 (cos(p1, z2) + cos(p2, z1)))``: each view's online prediction regresses
    the target projection of the other view (CARE's L_c and L_t). Scalar."""
    return (regression_loss(p1, z2) + regression_loss(p2, z1)).mean()


def symmetric_regression(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, form: str = "byol"
) -> torch.Tensor:
    """Each view's prediction regresses the other view's target, in one of two forms. Scalar.

    ``form="byol"``: BYOL's / CARE's ``mean(4 - 2 (cos(p1, z2) + cos(p2, z1)))``
    (``symmetric_byol_loss``); ``form="lightly"``: lightly's CIFAR benchmark,
    ``0.5 (mean(-cos(p1, z2)) + mean(-cos(p2, z1)))``, whose gradient is a quarter of it.
    """
    if form == "byol":
        return symmetric_byol_loss(p1, p2, z1, z2)
    if form == "lightly":
        return 0.5 * (negative_cosine(p1, z2).mean() + negative_cosine(p2, z1).mean())
    raise ValueError(f"unknown regression-loss form {form!r} (byol, lightly)")


def attention_loss(q: torch.Tensor, t: torch.Tensor, form: str = "code") -> torch.Tensor:
    """CARE's L_att for one view: pulls the C-stream output towards the T-stream's.

    ``form="code"`` (default, the official code): MSE of the L2-normalised outputs, mean
    over N x D; ``form="eq4"`` (the paper's Eq. 4): non-squared L2 distance, mean over N.
    ``t`` is detached here: L_att sends no gradient into the T-stream. Scalar.
    """
    q, t = F.normalize(q, dim=-1), F.normalize(t.detach(), dim=-1)
    if form == "code":
        return F.mse_loss(q, t)
    if form == "eq4":
        return (q - t).norm(dim=-1).mean()
    raise ValueError(f"unknown attention-loss form {form!r} (code, eq4)")


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, sg(z)) per sample: (N, D), (N, D) -> (N,)."""
    return -(F.normalize(p, dim=-1) * F.normalize(z.detach(), dim=-1)).sum(-1)


def info_nce(
    q: torch.Tensor, keys: torch.Tensor, temperature: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE with the positive at index 0 of each row's keys.

    q: (N, D); keys: (N, K, D), keys[:, 0] the positive; ``valid`` (N, K) bool drops keys
    that are not negatives of that query. Returns the mean cross-entropy of ``q.k / t``
    against class 0 (both L2-normalised). Keys get no gradient (momentum encoder).
    """
    q, keys = F.normalize(q, dim=-1), F.normalize(keys.detach(), dim=-1)
    logits = torch.einsum("nd,nkd->nk", q, keys).float() / temperature
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
