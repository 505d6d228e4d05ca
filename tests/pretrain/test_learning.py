"""Learning signal: a short pretraining run's kNN accuracy beats the same network at random
initialisation (fixed seeds), on the synthetic silhouettes.

Why these settings: on the coloured, textured shapes no method moved kNN off chance within a
CPU budget (the jitter leaves colour as the easiest cue). The silhouettes keep grey levels and
orientation fixed, so the shape is what survives crops; ``--aug crop`` drops the photometric
augmentations, which need far more steps than a CPU run has. The EMA target's momentum is 0.9
(cosine to 1), short as the run is (see ``pretrain.learning_signal``). Each run takes about
3 minutes, so they run in ``make test-extended`` (SimSiam, SimSiam-GSG, BYOL-GSG, CARE and
BYOL, the C-stream of CARE, at 64 px, and MaskCo at 96 px over two seeds);
``python -m pretrain.learning_signal --method M`` runs any method (docs/learning-signal.md
lists what each gained). The kNN accuracy is read on 576 val images: on 144 its standard
error (about 4 points) was as large as the gain asserted.
"""

from __future__ import annotations

import pytest

from pretrain.learning_signal import learning_signal

pytestmark = pytest.mark.slow


# measured on 2 CPU cores with 576 val images: SimSiam 44.1% at random init -> 51.4% after
# 360 steps (docs/learning-signal.md has every method's figures). They are left out of
# `make test` for CI time; `make test-extended` runs them.
@pytest.mark.extended
@pytest.mark.parametrize("method", ["simsiam", "simsiam_gsg", "byol_gsg"])
def test_knn_beats_random_init(tmp_path, method):
    res = learning_signal(method, tmp_path, epochs=30)
    assert res["final"] >= res["init"] + 5.0, res


@pytest.mark.extended
@pytest.mark.parametrize("method", ["care", "byol"])
def test_care_and_byol_knn_beat_random_init_at_64px(tmp_path, method):
    """CARE needs 64 px views (res4 4 x 4 for its transformer stream; at 32 px, 2 x 2, it
    gained 0.7 points); measured 40.3% at random init -> 60.2% after 360 steps. BYOL, its
    C-stream alone, is checked at the same size: at 32 px its random ResNet-18 already reads
    44.1% (no zero-init residuals, unlike the SimSiam family's 18.2%) and training dips, then
    climbs back to about that (kNN every 5 epochs: 34.4, 38.5, 40.6, 42.4, 43.2, 44.4; 45.5
    after 60 epochs); at 64 px it gains: 40.3% -> 46.9% (seed 0), 34.5% -> 42.0% (seed 1),
    about 2 minutes each."""
    res = learning_signal(method, tmp_path, epochs=30, image_size=64)
    assert res["final"] >= res["init"] + 5.0, res


@pytest.mark.extended
def test_maskco_knn_beats_random_init_at_96px(tmp_path):
    """MaskCo with its defaults (mean-filled boxes, bilinear crops) needs room for its boxes:
    its RoIAlign reads res5, 1 x 1 at 32 px (every box reads the same cell) and 3 x 3 at 96
    px. One seed's gain is too noisy to judge on (2026-12-04, 576 val images: seed 0 38.7% ->
    43.6%, seed 1 35.8% -> 56.9%), so two seeds' mean gain is asserted (about 8 minutes).
    The earlier check's noise-filled boxes (not the default) peaked then declined
    (docs/learning-signal.md, MaskCo)."""
    runs = [
        learning_signal("maskco", tmp_path / f"seed{seed}", seed=seed, epochs=30, image_size=96)
        for seed in (0, 1)
    ]
    gain = sum(r["final"] - r["init"] for r in runs) / len(runs)
    assert gain >= 5.0, runs
