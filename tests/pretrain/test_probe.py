"""The online linear probe against a transcription of solo-learn's online classifier."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pretrain.probe import OnlineProbe, probe_summary
from pretrain.trainer import Trainer


class Trunk(torch.nn.Module):
    """A backbone stand-in: (N, C, H, W) -> [res4-like, res5-like] maps."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return [y, torch.relu(y)]


def solo_learn_step(head, views, labels, lr, momentum=0.9):
    """solo-learn's BaseMethod.training_step for the classifier, transcribed: per large
    crop, cross-entropy of classifier(feats.detach()); the losses summed and divided by the
    number of large crops; one SGD step (momentum 0.9, no weight decay) at ``lr``."""
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum)
    losses = [F.cross_entropy(head(f), labels) for f in views]
    loss = sum(losses) / len(views)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return opt


def features(trunk, x):
    """The pooled features of ``x``, computed in eval mode so that the probe's hook (which
    keeps training-mode calls only) does not take them (``Trunk`` has no BatchNorm)."""
    trunk.eval()
    try:
        return trunk(x)[-1].detach().mean(dim=(2, 3))
    finally:
        trunk.train()


@pytest.mark.parametrize("concatenated", [False, True])
def test_the_probe_averages_its_loss_over_every_view_as_solo_learn(concatenated, float64):
    """Two views through the backbone (two calls, or one call on both concatenated), and an
    eval-mode call that must not count: two SGD steps equal solo-learn's on the same views,
    at the lrs the trainer hands over."""
    torch.manual_seed(0)
    trunk = Trunk()
    probe = OnlineProbe(8, 3, "cpu", lr=0.5, seed=3)
    probe.attach(trunk)
    ref = copy.deepcopy(probe.head)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5, momentum=0.9)
    labels = torch.tensor([0, 2, 1, 2])
    for lr in (0.5, 0.25):
        v1, v2 = torch.randn(4, 3, 6, 6), torch.randn(4, 3, 6, 6)
        if concatenated:
            trunk(torch.cat([v1, v2]))
        else:
            trunk(v1)
            trunk(v2)
        trunk.eval()
        trunk(torch.randn(4, 3, 6, 6))  # an evaluation pass in the step: not a view
        trunk.train()
        probe.step(labels, lr)
        # the transcription, with its optimiser's state carried over as solo-learn's is
        for g in ref_opt.param_groups:
            g["lr"] = lr
        loss = sum(F.cross_entropy(ref(features(trunk, v)), labels) for v in (v1, v2)) / 2
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
    for a, b in zip(probe.head.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert probe.optimizer.param_groups[0]["lr"] == 0.25
    assert probe.seen == 16 and probe.features == []


def test_the_first_view_probe_trains_on_the_first_view_only(float64):
    torch.manual_seed(0)
    trunk = Trunk()
    probe = OnlineProbe(8, 3, "cpu", lr=0.5, seed=3, views="first")
    probe.attach(trunk)
    ref = copy.deepcopy(probe.head)
    labels = torch.tensor([0, 2, 1])
    v1, v2 = torch.randn(3, 3, 6, 6), torch.randn(3, 3, 6, 6)
    trunk(v1)
    trunk(v2)
    probe.step(labels)
    solo_learn_step(ref, [features(trunk, v1)], labels, 0.5)
    for a, b in zip(probe.head.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="views"):
        OnlineProbe(8, 3, "cpu", views="second")


def test_features_that_do_not_line_up_with_the_labels_are_left_alone():
    trunk = Trunk()
    probe = OnlineProbe(8, 3, "cpu", seed=0)
    probe.attach(trunk)
    before = probe.head.weight.clone()
    trunk(torch.randn(5, 3, 6, 6))
    probe.step(torch.tensor([0, 1]))  # 5 rows for 2 labels: no step, features dropped
    assert torch.equal(probe.head.weight, before) and probe.features == []


def test_the_probe_lr_follows_the_main_schedule_scaled_by_the_batch():
    """--probe-lr 0.1 per 256 images at a global batch of 512: 0.2 at the base lr (0.24),
    0.1 where the main schedule is at half of it, 0 at its end; constant: 0.2 throughout."""
    for schedule, expected in (("main", (0.2, 0.1, 0.0)), ("constant", (0.2, 0.2, 0.2))):
        t = SimpleNamespace(cfg=SimpleNamespace(probe_lr=0.1, probe_schedule=schedule),
                            global_batch=512, lr=0.24)  # fmt: skip
        got = tuple(Trainer.probe_lr(t, lr) for lr in (0.24, 0.12, 0.0))
        assert got == pytest.approx(expected)


def test_the_probe_summary_is_its_last_and_its_best_epoch():
    history = [
        {"type": "step", "probe/top1": 99.0},  # not an epoch record
        {"type": "epoch", "epoch": 1, "probe/top1": 40.0},
        {"type": "epoch", "epoch": 2},  # not evaluated
        {"type": "epoch", "epoch": 3, "probe/top1": 55.5},
        {"type": "epoch", "epoch": 4, "probe/top1": 55.5},
        {"type": "epoch", "epoch": 5, "probe/top1": 50.0},
    ]
    assert probe_summary(history) == {"top1": 50.0, "best_top1": 55.5, "best_epoch": 3}
    assert probe_summary([{"type": "epoch", "epoch": 1}]) == {}
