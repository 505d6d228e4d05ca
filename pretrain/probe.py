"""Online linear probe (``--online-probe``, off by default, as in solo-learn and lightly).

A linear classifier (C -> classes) trained at every step on the detached, average-pooled
res5 features of the training batch's views, which the method's own forward computes (a
forward hook on the online backbone: no extra forward, so BatchNorm statistics are
untouched), with the batch's labels. As solo-learn's online classifier (and lightly's
benchmarks'): the cross-entropy is averaged over every view the online backbone saw
(``views="all"``; ``"first"``: the first view only), SGD with momentum 0.9 and no weight
decay, its lr following the run's own schedule (the trainer passes it each step). It has
its own optimiser and its own random generator for its initialisation, so a run with the
probe ends with bit-identical pretrained weights. Under DDP its gradients are averaged over
ranks. Evaluation: the backbone in eval mode (running BatchNorm statistics) on the
validation images, top-1 logged as ``probe/top1``; the training batches' running top-1 as
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


def probe_summary(history: list[dict]) -> dict[str, float]:
    """The online probe of a run's epoch records: its last top-1 (``top1``, what
    solo-learn reports), the best over the evaluated epochs (``best_top1``) and that epoch
    (``best_epoch``; the earliest on ties); empty when the probe never ran."""
    evaluated = [r for r in history if r.get("type") == "epoch" and PROBE in r]
    if not evaluated:
        return {}
    best = max(evaluated, key=lambda r: r[PROBE])  # max keeps the first of equal values
    return {"top1": evaluated[-1][PROBE], "best_top1": best[PROBE], "best_epoch": best["epoch"]}


class OnlineProbe:
    """The probe of one run: ``attach(backbone)``, then ``step(labels)`` after each
    training step, ``evaluate(backbone, val_dir, ...)`` at the end of an epoch."""

    def __init__(self, n_features: int, n_classes: int, device: str, lr: float = 0.1,
                 momentum: float = 0.9, seed: int = 0, views: str = "all"):  # fmt: skip
        if views not in ("all", "first"):
            raise ValueError(f"views must be 'all' or 'first', not {views!r}")
        self.views = views
        self.head = torch.nn.Linear(n_features, n_classes).to(device)
        g = torch.Generator().manual_seed(seed)  # never the global RNG the methods use
        with torch.no_grad():  # nn.Linear's default init, drawn from its own generator
            bound = 1 / math.sqrt(n_features)
            w = torch.empty(n_classes, n_features).uniform_(-bound, bound, generator=g)
            b = torch.empty(n_classes).uniform_(-bound, bound, generator=g)
            self.head.weight.copy_(w)
            self.head.bias.copy_(b)
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=lr, momentum=momentum)
        self.features: list[torch.Tensor] = []
        self.correct, self.seen = 0.0, 0

    def attach(self, backbone: torch.nn.Module):
        """Keep the pooled res5 (N, C) of each training-mode backbone call of a step (of
        the first one only with ``views="first"``)."""

        def hook(module, args, output):
            if module.training and (self.views == "all" or not self.features):
                self.features.append(
                    output[-1].detach().to(self.head.weight.dtype).mean(dim=(2, 3))
                )

        return backbone.register_forward_hook(hook)

    def batch(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The step's features (V*N, C) and their labels (V*N,): the N labels repeated for
        each of the V views, in the order the views went through the backbone (one call per
        view, or one call on the views concatenated); None when they do not line up."""
        feats, self.features = self.features, []
        if not feats:
            return None
        feats = torch.cat(feats)
        labels = labels.to(feats.device)
        n = labels.shape[0]
        if self.views == "first":
            feats = feats[:n]  # a forward of concatenated views: the first one
        if n == 0 or feats.shape[0] % n:
            return None
        return feats, labels.repeat(feats.shape[0] // n)

    def step(self, labels: torch.Tensor, lr: float | None = None) -> None:
        """One SGD step of the head (at ``lr`` when given) on the features the step's
        forward left."""
        pair = self.batch(labels)
        if pair is None:
            return
        feats, labels = pair
        if lr is not None:
            for g in self.optimizer.param_groups:
                g["lr"] = lr
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
