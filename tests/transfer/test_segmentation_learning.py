"""The segmentation protocol learns: 150 iterations on the synthetic ADE20K twin (CPU)."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from transfer import run_segmentation


# about 3 minutes on 2 cores: in `make test-extended`
@pytest.mark.slow
@pytest.mark.extended
def test_150_iterations_segment_the_twin(tmp_path):
    """From a random ResNet-50, the smoke protocol's pipeline (toolkit loader, poly schedule,
    5-scale test) reaches a pixel accuracy far above the majority class's share: measured
    75.4% after 150 iterations (6.9% after 30), and the IoU of the most frequent class > 0."""
    torch.manual_seed(0)
    weights = tmp_path / "tv_r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    argv = ["--weights", str(weights), "--seeds", "1", "--dataset", "synthetic", "--output",
            str(tmp_path), "--launcher", "inprocess", "SOLVER.MAX_ITER", "150"]  # fmt: skip
    assert run_segmentation.cli(argv) == 0
    m = json.loads((tmp_path / "ade20k_upernet_smoke/tv_r50/seed0/metrics.json").read_text())
    sem = m["sem_seg"]
    assert sem["pACC"] > 50, sem["pACC"]
    assert sem["mIoU"] > 15, sem["mIoU"]  # over the classes the twin holds
