"""Online linear probe (``--online-probe``, off by default, as in solo-learn and lightly).

A linear classifier (C -> classes) trained at every step on the detached, average-pooled
res5 features (N, C) of the training batch's first view, which the method's own forward
computes (a forward hook on the online backbone: no extra forward, so BatchNorm statistics
are untouched), with the batch's ImageFolder labels. It has its own SGD optimiser and its
own random generator for its initialisation, so a run with the probe ends with
bit-identical pretrained weights. Under DDP its gradients are averaged over ranks.
Evaluation: the backbone in eval mode (running BatchNorm statistics) on the validation
folder, top-1 logged as ``probe/top1``; the training batches' running top-1 as
``probe/train_top1``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from common.badimages import BadCount, SkipBad
from pretrain.data import LabelledImages

PROBE = "probe/top1"  # the headline key in a run's records


class OnlineProbe:
    """The probe of one run: ``attach(backbone)``, then ``step(labels)`` after each
    training step, ``evaluate(backbone, val_dir, ...)`` at the end of an epoch."""

    def __init__(self, n_features: int, n_classes: int, device: str, lr: float = 0.1,
                 momentum: float = 0.9, seed: int = 0):  # fmt: skip
        self.head = torch.nn.Linear(n_features, n_classes).to(device)
        g = torch.Generator().manual_seed(seed)  # never the global RNG the methods use
        with torch.no_grad():  # nn.Linear's default init, drawn from its own generator
            bound = 1 / math.sqrt(n_features)
            w = torch.empty(n_classes, n_features).uniform_(-bound, bound, generator=g)
            b = torch.empty(n_classes).uniform_(-bound, bound, generator=g)
            self.head.weight.copy_(w)
            self.head.bias.copy_(b)
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=lr, momentum=momentum)
        self.features: torch.Tensor | None = None
        self.correct, self.seen = 0.0, 0

    def attach(self, backbone: torch.nn.Module):
        """Keep the pooled res5 of the first backbone call of each step (the first view)."""

        def hook(module, args, output):
            if self.features is None and module.training:
                self.features = output[-1].detach().float().mean(dim=(2, 3))

        return backbone.register_forward_hook(hook)

    def step(self, labels: torch.Tensor) -> None:
        """One SGD step of the head on the features the step's forward left."""
        feats, self.features = self.features, None
        if feats is None:
            return
        labels = labels.to(feats.device)
        feats = feats[: labels.shape[0]]  # a forward of concatenated views: the first one
        if feats.shape[0] != labels.shape[0]:
            return
        with torch.enable_grad():
            logits = self.head(feats)
            loss = F.cross_entropy(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if dist.is_available() and dist.is_initialized():
            for p in self.head.parameters():
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
        self.optimizer.step()
        self.correct += float((logits.argmax(1) == labels).sum())
        self.seen += labels.shape[0]

    def train_top1(self) -> dict[str, float]:
        """The running top-1 (%) on the training batches since the last call."""
        out = {"probe/train_top1": 100 * self.correct / self.seen} if self.seen else {}
        self.correct, self.seen = 0.0, 0
        return out

    @torch.no_grad()
    def evaluate(self, backbone: torch.nn.Module, val_dir, size: int, device: str,
                 batch_size: int = 128, workers: int = 0,
                 resize: bool = True) -> dict[str, float]:  # fmt: skip
        """Top-1 (%) on ``val_dir`` (a folder or a ``Split``) with the backbone in eval mode
        (its mode is restored); ``resize`` as ``pretrain.data.eval_transform``'s."""
        ds = LabelledImages(val_dir, size, resize=resize)
        loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=SkipBad(),
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
        was_training = backbone.training
        backbone.eval()
        counter, correct, seen = BadCount(), 0, 0
        try:
            for item in loader:
                batch = counter.take(item)
                if batch is None:
                    continue
                x, y = batch
                feats = backbone(x.to(device, non_blocking=True))[-1].float().mean(dim=(2, 3))
                correct += int((self.head(feats).argmax(1).cpu() == y).sum())
                seen += y.shape[0]
        finally:
            backbone.train(was_training)
        return {PROBE: 100 * correct / seen} if seen else {}

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
