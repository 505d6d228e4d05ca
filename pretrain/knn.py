"""Weighted kNN probe (cosine similarity, temperature-weighted votes; Wu et al. 2018, DINO).

Features are the backbone's pooled res5 (N, C), L2-normalised. For each query the k most
similar bank features vote for their class with weight exp(sim / T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from common.badimages import BadCount, SkipBad
from pretrain.data import LabelledImages

KNN = "knn/top1_k20"  # the headline key of the kNN probe in a run's records (default k)


def has_knn(record: dict) -> bool:
    """Whether an epoch record holds a kNN result (any k: the CIFAR monitor has k 200)."""
    return any(k.startswith("knn/top1_k") for k in record)


def knn_summary(history: list[dict]) -> dict[str, float]:
    """The kNN monitor of a run's epoch records: per k the last value
    (``knn/top1_k200``), the best over the trained epochs (``knn/best_top1_k200``, as
    lightly reports it; the reading before training, epoch 0, counts only when it is the
    only one) and the epoch it was reached at (``knn/best_epoch_k200``; the earliest on
    ties)."""
    records = [r for r in history if r.get("type") == "epoch"]
    trained = [r for r in records if r.get("epoch", 0) >= 1]
    out: dict[str, float] = {}
    for rec in records:
        for key, value in rec.items():
            if key.startswith("knn/top1_k"):
                out[key] = value
    for rec in trained if any(has_knn(r) for r in trained) else records:
        for key, value in rec.items():
            if not key.startswith("knn/top1_k"):
                continue
            k = key.removeprefix("knn/top1_")
            if value > out.get(f"knn/best_top1_{k}", -1.0):
                out[f"knn/best_top1_{k}"] = value
                out[f"knn/best_epoch_{k}"] = rec["epoch"]
    return out


def knn_predict(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    n_classes: int,
    k: int,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Class scores (Q, n_classes) for L2-normalised query (Q, D) and bank (B, D)."""
    k = min(k, bank.shape[0])
    sim = query @ bank.t()
    top, idx = sim.topk(k, dim=1)
    weights = (top / temperature).exp()
    votes = torch.zeros(query.shape[0], n_classes, device=query.device)
    votes.scatter_add_(1, bank_labels[idx], weights)
    return votes


@torch.no_grad()
def extract(backbone: torch.nn.Module, loader: DataLoader, device: str):
    feats, labels = [], []
    was_training = backbone.training
    backbone.eval()
    counter = BadCount()  # unreadable images are left out of the probe
    for item in loader:
        batch = counter.take(item)
        if batch is None:
            continue
        x, y = batch
        _, res5 = backbone(x.to(device, non_blocking=True))
        feats.append(F.normalize(res5.float().mean(dim=(2, 3)), dim=1))
        labels.append(y.to(device))
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def knn_accuracy(
    backbone: torch.nn.Module,
    train_dir,
    val_dir,
    size: int,
    device: str,
    ks: tuple[int, ...] = (20, 200),
    temperature: float = 0.07,
    batch_size: int = 128,
    workers: int = 0,
    limit_per_class: int = 0,
    resize: bool = True,
) -> dict[str, float]:
    """Top-1 accuracy (%) of the weighted kNN classifier for each k, on ``val_dir``
    (``train_dir`` the bank; folders or ``Split``s); ``resize`` as ``eval_transform``'s."""

    def loader(folder, limit=0):
        ds = LabelledImages(folder, size, limit, resize=resize)
        # own generator: starting a loader draws a seed from the global RNG otherwise, and
        # the methods draw from it (GSG's pairing, MaskCo's boxes): the probe would change
        # the training run it watches
        return DataLoader(
            ds,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=SkipBad(),
            generator=torch.Generator().manual_seed(0),
        ), len(ds.classes)

    train_loader, n_classes = loader(train_dir, limit_per_class)
    val_loader, _ = loader(val_dir)
    bank, bank_y = extract(backbone, train_loader, device)
    query, query_y = extract(backbone, val_loader, device)
    out = {}
    for k in ks:
        pred = knn_predict(query, bank, bank_y, n_classes, k, temperature).argmax(1)
        out[f"knn/top1_k{k}"] = float((pred == query_y).float().mean() * 100)
    return out
