"""The classification loop on a GPU: bf16 autocast, channels-last, one GPU per process."""

from __future__ import annotations

import json

import pytest
import torch

from transfer import run_linear

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("protocol", ["linear_care", "knn", "semisup_10pct"])
def test_protocols_run_on_one_gpu_with_bf16(protocol, tmp_path, shapes_root):
    import torchvision

    weights = tmp_path / "tv_r50.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), weights)
    args = run_linear.get_args_parser().parse_args(
        ["--weights", str(weights), "--protocol", protocol, "--seeds", "1", "--dataset",
         "synthetic", "--data", str(shapes_root / "imagefolder"), "--output", str(tmp_path),
         "--num-gpus", "1", "--amp"]
    )  # fmt: skip
    assert run_linear.main(args) == 0
    m = json.loads((tmp_path / f"{protocol}_smoke/tv_r50/seed0/metrics.json").read_text())
    assert m["amp"] is True and m["arch"] == "ResNet-50"
    top1 = m["cls"].get("top1", m["cls"].get("k20_top1"))
    assert 0.0 <= top1 <= 100.0
