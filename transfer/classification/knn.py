"""Weighted kNN classification on frozen features (GSG's ``main_knn.py``, after InstDisc).

Each query votes with its k most cosine-similar bank features, each weighted by
exp(similarity / T); the class with the largest summed weight wins. Features are pooled
res5, L2-normalised; the train split is the bank. Under several processes each keeps its
shard of the bank and the val features are gathered (``sharded_knn_scores``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def nearest(
    query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest cosines of each query row (q, D) against ``bank`` (N, D) and their
    labels, both (q, k); columns past N are padded with -inf and label 0 (weight 0)."""
    n = min(k, bank.shape[0])
    top, idx = (query @ bank.t()).topk(n, dim=1)  # (q, n)
    labels = bank_labels[idx]
    if n < k:
        top = torch.cat([top, top.new_full((top.shape[0], k - n), float("-inf"))], dim=1)
        labels = torch.cat([labels, labels.new_zeros((labels.shape[0], k - n))], dim=1)
    return top, labels


def vote(
    sims: torch.Tensor, labels: torch.Tensor, classes: int, k: int, temperature: float
) -> torch.Tensor:
    """Class scores (q, classes) from candidate neighbours (q, M) with labels (q, M): the k
    largest cosines each add exp(cos / temperature) to their class."""
    top, idx = sims.topk(min(k, sims.shape[1]), dim=1)
    weights = (top / temperature).exp()  # exp(-inf) = 0 for padding
    scores = torch.zeros(sims.shape[0], classes, device=sims.device, dtype=weights.dtype)
    return scores.scatter_add_(1, labels.gather(1, idx), weights)


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
        out.append(vote(*nearest(q, bank, bank_labels, k), classes, k, temperature))
    return torch.cat(out)


def sharded_knn_scores(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    classes: int,
    k: int,
    temperature: float,
    chunk: int = 256,
) -> torch.Tensor:
    """``knn_scores`` with the bank split over processes: ``query`` (Q, D) is the same on
    every process, ``bank`` (N_rank, D) this process's shard. Each process finds the k
    nearest in its shard; the k nearest overall are among the gathered world x k candidates.
    Returns (Q, classes) on every process. No process holds more than its shard of the bank
    (ImageNet's 1.28M x 2048 fp32 bank is 10.5 GB in one piece)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return knn_scores(query, bank, bank_labels, classes, k, temperature, chunk)
    world = dist.get_world_size()
    total = torch.tensor([bank.shape[0]], device=bank.device)
    dist.all_reduce(total)
    k = min(k, int(total.item()))
    out = []
    for q in query.split(chunk):  # the same chunks on every process
        sims, labels = nearest(q, bank, bank_labels, k)
        all_sims = [torch.empty_like(sims) for _ in range(world)]
        all_labels = [torch.empty_like(labels) for _ in range(world)]
        dist.all_gather(all_sims, sims.contiguous())
        dist.all_gather(all_labels, labels.contiguous())
        out.append(vote(torch.cat(all_sims, 1), torch.cat(all_labels, 1), classes, k, temperature))
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
