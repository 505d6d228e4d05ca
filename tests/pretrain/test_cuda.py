"""CUDA-only checks (skipped without a GPU; run on the GPU machine): nvjpeg's batched
decode against libjpeg, device views on CUDA against the same views on the CPU, AMP
(bf16 / fp16 + grad scaler) and channels_last steps of every method against fp32, RoIAlign
on CUDA against the CPU, and a whole ``--batch-aug on`` pretraining run on CUDA."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_jpeg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

METHODS = ["care", "byol", "simsiam", "simsiam_gsg", "byol_gsg", "maskco"]


def _jpeg(seed: int, h: int = 120, w: int = 160, subsampling: int = -1) -> torch.Tensor:
    """A smooth colour texture as JPEG bytes (1-D uint8); ``subsampling`` 0 = 4:4:4 chroma,
    -1 = Pillow's default (4:2:0 at this quality)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 10, w // 10, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((w, h), Image.BICUBIC).save(
        buf, "JPEG", quality=90, subsampling=subsampling
    )
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


@pytest.mark.parametrize("subsampling,mean_tol", [(0, 1.0), (-1, 8.0)])
def test_nvjpeg_batch_decode_matches_libjpeg_and_drops_a_corrupt_file(subsampling, mean_tol):
    """Full-resolution chroma (4:4:4): nvjpeg and libjpeg agree to rounding. 4:2:0: they
    upsample chroma differently (libjpeg's "fancy" triangle filter), so strong colour edges
    differ more; torchvision's own test allows a mean of 2 levels on a photo."""
    from pretrain.device_aug import decode_images

    payloads = [_jpeg(s, 120 + 8 * s, 160, subsampling) for s in range(6)]
    payloads.insert(3, payloads[0][:200].clone())  # a truncated JPEG
    out = decode_images(payloads, "cuda")
    assert out[3] is None or out[3].shape[0] == 3  # dropped, or decoded as far as it goes
    for i, (p, img) in enumerate(zip(payloads, out)):
        if i == 3:
            continue
        ref = decode_jpeg(p).int()
        assert img.is_cuda and img.shape == ref.shape
        diff = (img.cpu().int() - ref).abs().float()
        print(
            f"4:{'4:4' if subsampling == 0 else '2:0'} image {i}: mean |diff| "
            f"{diff.mean():.2f}, max {diff.max():.0f}"
        )
        assert diff.mean() < mean_tol, (i, diff.mean(), diff.max())


def test_device_views_on_cuda_match_the_same_views_on_cpu():
    from torch.utils.data import default_collate

    from pretrain.data import byol_views
    from pretrain.device_aug import DeviceAugment

    views = byol_views(64)
    aug = DeviceAugment(views)
    images = [decode_jpeg(_jpeg(s)) for s in range(16)]
    torch.manual_seed(0)
    params = [default_collate([v.build().draw(160, 120, None) for _ in images]) for v in views]
    cpu = aug([im.clone() for im in images], params)
    gpu = aug([im.cuda() for im in images], params)
    for c, g in zip(cpu, gpu):
        # normalised units (std ~0.23 of the [0, 1] range); bilinear + blur kernels differ
        # between the backends only by rounding
        assert (g.cpu() - c).abs().mean() < 2e-3
        assert (g.cpu() - c).abs().max() < 0.1


def _views_and_extra(model, n=8, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = model.views_needed(model.cfg)  # GSG: four crops
    views = [torch.randn(n, 3, size, size, generator=g).cuda() for _ in range(k)]
    extra = []
    if model.needs_boxes:
        from pretrain.maskco import random_boxes

        torch.manual_seed(seed)
        extra = [random_boxes(n, 2, size, (0.3, 0.6), "cuda")]
    return views, extra


@pytest.mark.parametrize("method", METHODS)
def test_amp_and_channels_last_loss_matches_fp32(method):
    """The same initial loss (train-mode BN on one batch) in fp32 / contiguous and in bf16 /
    fp16 autocast with channels_last; fp16 steps with the grad scaler: overflowing steps
    are skipped (the scale falls), then updates happen and everything stays finite."""
    from pretrain.amp import AmpStep
    from pretrain.config import PretrainConfig
    from pretrain.methods import build_method

    torch.manual_seed(0)
    heads = PretrainConfig(method=method, arch="resnet18").options
    model = build_method(method, "resnet18", heads).cuda()
    views, extra = _views_and_extra(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def loss_with(dtype, channels_last):
        model.load_state_dict(state)
        mf = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=mf)
        v = [x.to(memory_format=mf) for x in views]
        torch.manual_seed(1)  # GSG pairings, MaskCo negatives
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(v, *extra)["loss"].float()

    ref = loss_with(None, False)
    for dtype in (torch.bfloat16, torch.float16):
        got = loss_with(dtype, True)
        assert torch.isfinite(got)
        assert abs(got.item() - ref.item()) <= 0.03 * abs(ref.item()) + 1e-3, (dtype, got, ref)

    model.load_state_dict(state)
    opt = torch.optim.SGD(model.param_groups(), lr=0.05, momentum=0.9, foreach=True)
    amp_step = AmpStep(opt, torch.float16, "cuda")  # the Trainer's step, with its scaler
    for _ in range(30):  # the scale starts at 2**16: the first steps may overflow
        with amp_step.autocast():
            loss = model([v.to(memory_format=torch.channels_last) for v in views], *extra)["loss"]
        amp_step.step(loss)
        model.update_target(0.99)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the update reached the backbone: with zero-initialised residual blocks (the SimSiam
    # family's) a branch's first BN gets no gradient, or one too small to move an fp32
    # weight, until its last BN's gamma has grown, so a few tensors may still be at their start
    moved = [not torch.equal(p, state[k]) for k, p in model.named_parameters()
             if k.startswith("backbone")]  # fmt: skip
    assert sum(moved) >= 0.9 * len(moved), f"{sum(moved)} of {len(moved)} backbone tensors updated"


def test_roi_align_features_on_cuda_match_cpu():
    from torchvision.ops import roi_align

    from pretrain.maskco import random_boxes

    torch.manual_seed(0)
    feats = torch.randn(4, 256, 14, 14)
    boxes = random_boxes(4, 3, 224, (0.1, 0.6), "cpu").reshape(-1, 4)
    idx = torch.arange(4).repeat_interleave(3).float()[:, None]
    rois = torch.cat([idx, boxes], 1)
    cpu = roi_align(feats, rois, 7, 1 / 16, 2, aligned=True)
    gpu = roi_align(feats.cuda(), rois.cuda(), 7, 1 / 16, 2, aligned=True)
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)


@pytest.mark.parametrize("method,batch_aug", [("care", "on"), ("byol", "off"), ("maskco", "off")])
def test_pretraining_run_on_cuda(tmp_path, shapes_root, method, batch_aug):
    """A whole run on CUDA (bf16, channels_last, pinned loader; ``--batch-aug on`` decodes
    and augments on the GPU): finite losses, checkpoint and kNN written."""
    from pretrain.recipes import recipe_config
    from pretrain.trainer import Trainer

    cfg = recipe_config(
        "test",
        method=method,
        data=str(shapes_root / "imagefolder"),
        output=str(tmp_path),
        epochs=2,
        batch_size=16,
        image_size=64,
        workers=2,
        knn_every=2,
        batch_aug=batch_aug,
    )
    t = Trainer(cfg)
    assert t.device.startswith("cuda") and t.batch_aug == (batch_aug == "on")
    t.fit()
    steps = [h for h in t.history if h.get("type") == "step"]
    assert steps and all(np.isfinite(h["loss"]) for h in steps)
    epochs = [h for h in t.history if h.get("type") == "epoch" and "knn/top1_k20" in h]
    assert epochs and 0 <= epochs[-1]["knn/top1_k20"] <= 100
    assert Path(cfg.output, f"{method}_resnet18.pth").is_file()


def test_prefetcher_side_stream_results_are_complete_when_consumed():
    """Batches made on the prefetch thread's stream (long kernels) are read on the default
    stream right away: without the event wait / record_stream they would be read early or
    their memory reused under the reader."""
    import contextlib

    from pretrain.device_aug import DevicePrefetcher

    def make(i):
        x = torch.full((2048, 2048), float(i), device="cuda")
        for _ in range(20):  # slow enough that an unsynchronised read sees the old values
            x = x @ torch.eye(2048, device="cuda")
        return [x + 1]

    with contextlib.closing(iter(DevicePrefetcher(range(12), make, "cuda"))) as it:
        sums = [float(batch[0].mean()) for batch in it]
    assert sums == [i + 1.0 for i in range(12)]
