"""Schedules and the kNN probe against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.knn import knn_predict
from pretrain.schedules import lr_at, momentum_at


def test_lr_warmup_then_cosine_by_hand():
    # warmup over 10 steps from 0 to 1, cosine to 0 at step 110
    assert lr_at(0, 110, 10, 1.0, 0.0) == 0.0
    assert lr_at(5, 110, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert lr_at(10, 110, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(60, 110, 10, 1.0, 0.0) == pytest.approx(0.5)  # half way: cos(pi/2) = 0
    assert lr_at(85, 110, 10, 1.0, 0.0) == pytest.approx(0.5 * (1 + math.cos(0.75 * math.pi)))
    assert lr_at(110, 110, 10, 1.0, 0.0) == pytest.approx(0.0)
    assert lr_at(500, 110, 10, 1.0, 0.0) == pytest.approx(0.0)  # clamped past the end
    assert lr_at(0, 100, 0, 0.2) == pytest.approx(0.2)  # no warmup


def test_ema_momentum_by_hand():
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99) == pytest.approx(1.0)
    assert momentum_at(25, 100, 0.9) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)


def test_knn_votes_by_hand():
    """Bank: three unit vectors of class 0, 1, 1; the query's similarities are 0.8, 0.96,
    0.6. With k = 1 the nearest (class 1) wins; with k = 3 and T = 1 each class gets the sum
    of exp(sim) of its neighbours: e^0.8 for class 0, e^0.96 + e^0.6 for class 1."""
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[0.8, 0.6]])  # similarities 0.8, 0.96, 0.6
    votes1 = knn_predict(q, bank, labels, 2, k=1, temperature=1.0)
    assert votes1.argmax(1).item() == 1  # the nearest is the class-1 vector at 0.96
    votes3 = knn_predict(q, bank, labels, 2, k=3, temperature=1.0)
    assert votes3[0, 0].item() == pytest.approx(math.exp(0.8), rel=1e-6)
    assert votes3[0, 1].item() == pytest.approx(math.exp(0.96) + math.exp(0.6), rel=1e-6)
    votes2 = knn_predict(torch.tensor([[1.0, 0.0]]), bank, labels, 2, k=2, temperature=0.1)
    # sims 1.0 (class 0) and 0.6 (class 1): exp(10) vs exp(6)
    assert votes2[0].tolist() == pytest.approx([math.exp(10), math.exp(6)], rel=1e-5)
    assert knn_predict(q, bank, labels, 2, k=50).shape == (1, 2)  # k capped at the bank size
