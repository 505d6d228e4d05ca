"""Weighted kNN classification on frozen features (GSG's ``main_knn.py``, after InstDisc).

Each query votes with its k most cosine-similar bank features, each weighted by
exp(similarity / T); the class with the largest summed weight wins. Features are pooled
res5, L2-normalised; the train split is the bank, assembled from every process's shard by
``gather_rows``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def knn_scores(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    classes: int,
    k: int,
    temperature: float,
    chunk: int = 256,
) -> torch.Tensor:
    """Class scores (Q, classes) of L2-normalised ``query`` (Q, D) against ``bank`` (N, D)
    with labels (N,): sum over the k nearest of exp(cos / temperature) per class."""
    k = min(k, bank.shape[0])
    out = []
    for q in query.split(chunk):
        sim = q @ bank.t()  # (q, N)
        top, idx = sim.topk(k, dim=1)  # (q, k)
        weights = (top / temperature).exp()
        scores = torch.zeros(q.shape[0], classes, device=q.device, dtype=weights.dtype)
        scores.scatter_add_(1, bank_labels[idx], weights)
        out.append(scores)
    return torch.cat(out)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, int]:
    """Number of rows whose label is among the top-k scores, for each k."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hit = top == labels.view(-1, 1)
    return {k: int(hit[:, :k].any(1).sum()) for k in ks}


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every process's rows (n_rank, ...) concatenated in rank order, on every process
    (the shards may differ in length)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    most = int(max(s.item() for s in sizes))
    padded = torch.cat([t, t.new_zeros((most - t.shape[0], *t.shape[1:]))]).contiguous()
    bufs = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(bufs, padded)
    return torch.cat([b[: int(s.item())] for b, s in zip(bufs, sizes)])


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Pooled (N, C, H, W) -> L2-normalised (N, C) in float32."""
    return F.normalize(x.float().mean(dim=(2, 3)), dim=1)
