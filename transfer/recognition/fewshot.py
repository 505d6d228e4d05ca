"""ssl-transfer's few-shot evaluation: ProtoNet episodes on frozen features, no training.

An episode (``few_shot.py`` with its ``SetDataManager``): ``n_way`` classes drawn without
replacement; from each, ``n_shot + n_query`` images drawn without replacement (the first
batch of a shuffled per-class loader); one permutation of those positions, shared by the
classes, puts the first ``n_shot`` in the support set and the rest in the query set.
Prototypes are the mean support feature per class; a query goes to the class of the
nearest prototype in squared Euclidean distance (``log_softmax(-d)``). The backbone is in
eval mode and the transform deterministic, so each image's feature is the same in every
episode: features are computed once (``features.py``) and the episodes run on them,
which gives the accuracies the per-episode forward passes give (tested).

The result is the mean episode accuracy and ``1.96 * std / sqrt(episodes)`` with the
population std (``np.std``), as ssl-transfer prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Episode:
    """Positions into the features: ``support`` (n_way, n_shot), ``query`` (n_way, n_query);
    row i holds images of ``classes[i]``."""

    classes: torch.Tensor
    support: torch.Tensor
    query: torch.Tensor


def class_members(labels: np.ndarray, min_images: int) -> tuple[list[int], list[np.ndarray]]:
    """(the classes with at least ``min_images`` images, each one's positions in order)."""
    classes, members = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) >= min_images:
            classes.append(int(c))
            members.append(idx)
    return classes, members


def episodes(members: list[np.ndarray], n_way: int, n_shot: int, n_query: int, n: int,
             generator: torch.Generator):  # fmt: skip
    """Yield ``n`` Episodes drawn as ssl-transfer draws them, from ``generator``."""
    per_class = n_shot + n_query
    for _ in range(n):
        chosen = torch.randperm(len(members), generator=generator)[:n_way]
        batch = torch.stack([
            torch.as_tensor(members[c])[torch.randperm(len(members[c]), generator=generator)
                                        [:per_class]]
            for c in chosen.tolist()
        ])  # fmt: skip
        order = torch.randperm(per_class, generator=generator)
        yield Episode(chosen, batch[:, order[:n_shot]], batch[:, order[n_shot:]])


def protonet(support: torch.Tensor, query: torch.Tensor) -> tuple[float, float]:
    """(loss, accuracy in [0, 1]) of one episode: support (W, S, D), query (W, Q, D)."""
    n_way, n_query = query.shape[:2]
    proto = support.mean(1)  # (W, D)
    zq = query.reshape(n_way * n_query, -1)
    dists = (zq.unsqueeze(1) - proto.unsqueeze(0)).pow(2).sum(2)  # (W*Q, W)
    log_p = F.log_softmax(-dists, dim=1).view(n_way, n_query, n_way)
    target = torch.arange(n_way).view(n_way, 1).expand(n_way, n_query)
    loss = -log_p.gather(2, target.unsqueeze(2)).mean()
    acc = (log_p.argmax(2) == target).float().mean()
    return float(loss), float(acc)


@dataclass(frozen=True)
class FewShotResult:
    accuracies: np.ndarray  # (episodes,) in %
    losses: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.accuracies.mean())

    @property
    def std(self) -> float:
        return float(self.accuracies.std())  # population std, as np.std in ssl-transfer

    @property
    def ci95(self) -> float:
        return interval95(self.std, len(self.accuracies))

    def summary(self) -> dict:
        return {"mean": self.mean, "std": self.std, "ci95": self.ci95,
                "episodes": len(self.accuracies), "loss": float(self.losses.mean())}  # fmt: skip


def interval95(std: float, n: int) -> float:
    """ssl-transfer's half-width: 1.96 * std / sqrt(n)."""
    return 1.96 * std / math.sqrt(n)


def evaluate(features: np.ndarray, labels: np.ndarray, n_way: int, n_shot: int, n_query: int,
             n_episodes: int, seed: int, progress=None) -> FewShotResult:  # fmt: skip
    """ProtoNet accuracy over ``n_episodes`` seeded episodes on (N, D) features. Only
    classes with at least ``n_shot + n_query`` images take part (the caller checks that
    ``n_way`` of them remain)."""
    _, members = class_members(labels, n_shot + n_query)
    if len(members) < n_way:
        raise ValueError(f"{len(members)} classes have {n_shot + n_query} images; {n_way} needed")
    z = torch.from_numpy(np.ascontiguousarray(features, np.float32))
    gen = torch.Generator().manual_seed(seed)
    accs, losses = np.zeros(n_episodes), np.zeros(n_episodes)
    for k, ep in enumerate(episodes(members, n_way, n_shot, n_query, n_episodes, gen)):
        losses[k], acc = protonet(z[ep.support], z[ep.query])
        accs[k] = acc * 100.0
        if progress is not None:
            progress(1)
    return FewShotResult(accs, losses)
