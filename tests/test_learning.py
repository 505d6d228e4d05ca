"""Learning signal: a short pretraining run's kNN accuracy beats the same network at random
initialisation (fixed seeds), on the synthetic silhouettes.

Why these settings: on the coloured, textured shapes no method moved kNN off chance within a
CPU budget (the jitter leaves colour as the easiest cue). The silhouettes keep grey levels and
orientation fixed, so the shape is what survives crops; ``--aug crop`` drops the photometric
augmentations, which need far more steps than a CPU run has. The EMA target's momentum is 0.9
(cosine to 1), short as the run is (see ``pretrain.learning_signal``). Each run takes about
3.5 minutes, so ``make test`` runs SimSiam and BYOL (the C-stream of CARE), the two that gained
at least 5 points here; ``python -m pretrain.learning_signal --method M`` runs any method (the
README lists what each gained).
"""

from __future__ import annotations

import pytest

from pretrain.learning_signal import learning_signal

pytestmark = pytest.mark.slow


# measured on 2 CPU cores: 42.4% at random init (6 classes, 144 val images) -> 50.0% (SimSiam)
# and 50.7% (BYOL) after 360 steps
@pytest.mark.parametrize("method", ["simsiam", "byol"])
def test_knn_beats_random_init(tmp_path, method):
    res = learning_signal(method, tmp_path, epochs=30)
    assert res["final"] >= res["init"] + 5.0, res
