"""pretrain.visualize: Grad-CAM maps, the same from every checkpoint format."""

from __future__ import annotations

import torch
import torchvision
from PIL import Image

from pretrain import visualize


def test_gradcam_same_from_torchvision_and_detectron2_files(tmp_path):
    from transfer.convert import convert_file

    torch.manual_seed(0)
    src = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), src)
    convert_file(src, tmp_path / "r18.pkl")
    x = torch.randn(2, 3, 64, 64)
    a, arch = visualize.load_trunk(src)
    b, _ = visualize.load_trunk(tmp_path / "r18.pkl")
    ma, mb = visualize.gradcam(a, x), visualize.gradcam(b, x)
    assert arch == "ResNet-18" and ma.shape == (2, 64, 64)
    assert (ma >= 0).all() and ma.amax() > 0
    torch.testing.assert_close(ma, mb)


def test_gradcam_weights_are_the_pooled_feature(float64):
    """With s = ||GAP(A)||^2 / 2 the map is ReLU(sum_k GAP(A)_k A_k / HW), upsampled."""
    torch.manual_seed(0)
    trunk = visualize.ResNetTrunk("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, a = trunk(x)
        g = a.mean(dim=(2, 3), keepdim=True) / (a.shape[2] * a.shape[3])
        ref = torch.relu((g * a).sum(1, keepdim=True))
        ref = torch.nn.functional.interpolate(
            ref, size=(64, 64), mode="bilinear", align_corners=False
        )[:, 0]
    assert ref.dtype == torch.float64
    torch.testing.assert_close(visualize.gradcam(trunk, x), ref, rtol=1e-10, atol=1e-12)


def test_cli_draws_a_png(tmp_path):
    src = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), src)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.new("RGB", (40, 30), (40 * i, 100, 200)).save(imgs / f"{i}.jpg")
    out = visualize.main(
        visualize.get_args_parser().parse_args(
            [
                "--weights",
                str(src),
                str(src),
                "--images",
                str(imgs),
                "--out",
                str(tmp_path / "m.png"),
                "--size",
                "64",
            ]
        )
    )
    with Image.open(out) as im:
        assert im.size[0] > 200
