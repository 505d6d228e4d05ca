"""Batched device augmentation (--batch-aug): the same draws as the PIL path, each op equal
to torchvision's functional op, whole views close to the PIL views, bad files counted."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from common.badimages import BadCount, SkipBad
from pretrain import device_aug as D
from pretrain.data import MEAN, STD, ViewsDataset, byol_views, collate_raw, simsiam_views


class _Blur:  # the PIL path's blur and solarize as they were written before the split
    def __init__(self, p, sigma):
        self.p, self.sigma = p, sigma

    def __call__(self, img):
        if torch.rand(()) >= self.p:
            return img
        s = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * float(torch.rand(()))
        return img.filter(ImageFilter.GaussianBlur(radius=s))


class _Solarize:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img, 128) if torch.rand(()) < self.p else img


def _texture(h=70, w=90, seed=0) -> Image.Image:
    """A smooth colour texture with an edge (resampling differences stay small)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img).copy()
    arr[:, : w // 3] //= 3  # a dark band: flips and crops move it
    return Image.fromarray(arr)


@pytest.mark.parametrize("cfg", byol_views(32) + simsiam_views(40))
def test_draw_then_apply_equals_torchvision_transforms(cfg):
    """ViewTransform (draw, then apply) gives bit-identical views to torchvision's own
    transforms in the documented order, and leaves the RNG where they leave it."""
    ref = T.Compose(
        [
            T.RandomResizedCrop(cfg.size, cfg.scale),  # the official pipelines: bilinear
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(*cfg.jitter)], p=cfg.jitter_p),
            T.RandomGrayscale(cfg.gray_p),
            _Blur(cfg.blur_p, cfg.blur_sigma()),
            _Solarize(cfg.solarize_p),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    view = cfg.build()
    img = _texture()
    for seed in range(40):
        torch.manual_seed(seed)
        a, after_a = ref(img), torch.rand(1)
        torch.manual_seed(seed)
        b, after_b = view(img)[0], torch.rand(1)
        assert torch.equal(a, b) and torch.equal(after_a, after_b), seed


def test_batched_ops_equal_torchvision_functional_ops():
    g = torch.Generator().manual_seed(0)
    # float64: the formulas are compared, not the CPU's float32 kernels (the blur's sums)
    x = torch.rand(5, 3, 18, 23, generator=g, dtype=torch.float64)
    f = torch.tensor([0.6, 1.0, 1.4, 0.0, 1.9], dtype=torch.float64)
    hue = torch.tensor([-0.5, -0.1, 0.0, 0.07, 0.5], dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 2.5, 0.8, 1.6], dtype=torch.float64)
    k = 2 * int(np.ceil(3 * 2.5)) + 1
    per_op = [
        (D.brightness(x.clone(), f), TF.adjust_brightness, f),
        (D.contrast(x.clone(), f), TF.adjust_contrast, f),
        (D.saturation(x.clone(), f), TF.adjust_saturation, f),
    ]
    for out, ref, fs in per_op:
        for i in range(5):
            torch.testing.assert_close(out[i], ref(x[i], float(fs[i])), atol=1e-12, rtol=0)
    # torchvision's adjust_hue computes in float32 whatever the input: compared in float32,
    # element-wise arithmetic (no sums, so no CPU-dependent kernel order), a few ulps apart
    x32, hue32 = x.float(), hue.float()
    out = D.hue(x32.clone(), hue32)
    for i in range(5):
        ref = TF.adjust_hue(x32[i], float(hue32[i]))
        torch.testing.assert_close(out[i], ref, atol=64 * torch.finfo().eps, rtol=0)
    blurred = D.gaussian_blur(x.clone(), sigma)
    for i in range(5):
        ref = TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2)
        torch.testing.assert_close(blurred[i], ref, atol=1e-12, rtol=0)
        torch.testing.assert_close(D.gray(x)[i], TF.rgb_to_grayscale(x[i]), atol=1e-12, rtol=0)
    hsv_round_trip = D.hsv_to_rgb(D.rgb_to_hsv(x))
    torch.testing.assert_close(hsv_round_trip, x, atol=1e-12, rtol=0)


def test_photometric_follows_each_samples_draws():
    """Each sample gets its own flip, jitter order and factors, grayscale, blur and
    solarize: the batched result equals applying torchvision's ops one image at a time."""
    n = 6
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p = {
        "flip": torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool),
        "jitter": torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool),
        "order": torch.tensor(
            [[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2], [2, 3, 0, 1], [1, 3, 0, 2], [3, 0, 2, 1]]
        ),
        "factors": torch.tensor(
            [
                [1.3, 0.7, 1.2, 0.05],
                [0.8, 1.3, 0.6, -0.08],
                [1.1, 1.1, 1.1, 0.1],
                [0.7, 0.9, 1.4, 0.02],
                [1.2, 0.6, 0.9, -0.03],
                [1.0, 1.2, 0.5, 0.09],
            ]
        ),
        "gray": torch.tensor([0, 0, 1, 0, 1, 0], dtype=torch.bool),
        "sigma": torch.tensor([0.0, 1.2, 0.0, 0.5, 0.9, 0.0]),
        "solarize": torch.tensor([0, 1, 0, 0, 1, 1], dtype=torch.bool),
    }
    out = D.photometric(x.clone(), p, [True] * 4)
    k = 2 * int(np.ceil(3 * 1.2)) + 1
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(n):
        y = x[i]
        if p["flip"][i]:
            y = TF.hflip(y)
        if p["jitter"][i]:
            for op in p["order"][i].tolist():
                y = ops[op](y, float(p["factors"][i, op]))
        if p["gray"][i]:
            y = TF.rgb_to_grayscale(y, num_output_channels=3)
        if p["sigma"][i] > 0:
            y = TF.gaussian_blur(y, [k, k], [float(p["sigma"][i])] * 2)
        if p["solarize"][i]:
            y = TF.solarize(y, 128 / 255)
        # float64 but for torchvision's hue, which rounds to float32 (element-wise)
        torch.testing.assert_close(out[i], y, atol=64 * torch.finfo().eps, rtol=0, msg=str(i))


def _write(folder, name, img, fmt="JPEG"):
    folder.mkdir(parents=True, exist_ok=True)
    img.save(folder / name, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _device_views(ds, views, indices):
    payloads, params, _, _ = BadCount().take(SkipBad(collate_raw)([ds[i] for i in indices]))
    return D.DeviceAugment(views)(D.decode_images(payloads, "cpu"), params)


@pytest.mark.parametrize("views", [byol_views(48, (0.3, 1.0)), simsiam_views(48, (0.3, 1.0))])
def test_device_views_are_close_to_pil_views(tmp_path, views):
    """Same seeds -> the same draws: the device views differ from the PIL views only by
    resampling, rounding and the blur's approximation (mean |diff| < 0.02 of the [0, 1]
    range; measured about 0.005), while the PIL views of another epoch differ by 0.2."""
    for i in range(8):
        _write(tmp_path / "c", f"{i}.jpg", _texture(64 + 4 * i, 80, seed=i))
    pil = ViewsDataset(tmp_path, views, seed=3)
    raw = ViewsDataset(tmp_path, views, seed=3, raw=True)
    dev = _device_views(raw, views, range(8))
    std = torch.tensor(STD).view(1, 3, 1, 1)
    other = ViewsDataset(tmp_path, views, seed=3)
    other.set_epoch(1)
    for v in range(2):
        a = torch.stack([pil[i][0][v] for i in range(8)]) * std
        b = dev[v] * std
        c = torch.stack([other[i][0][v] for i in range(8)]) * std
        close, far = (a - b).abs().mean(), (a - c).abs().mean()
        assert close < 0.02, (v, float(close))
        assert far > 10 * close, (v, float(close), float(far))


def test_decode_keeps_good_files_and_drops_corrupt_ones(tmp_path):
    img = _texture(40, 50)
    _write(tmp_path / "a", "good.jpg", img)
    _write(tmp_path / "a", "other.png", img, "PNG")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    head = buf.getvalue()[:600]  # a valid header, then garbage: PIL opens it lazily
    (tmp_path / "a" / "zz_corrupt.jpg").write_bytes(head + bytes(range(256)) * 8)
    (tmp_path / "a" / "zz_text.jpg").write_bytes(b"not an image")
    ds = ViewsDataset(tmp_path, byol_views(24), raw=True)
    names = [s[0].split("/")[-1] for s in ds.samples]
    assert names == ["good.jpg", "other.png", "zz_corrupt.jpg", "zz_text.jpg"]
    items = [ds[i] for i in range(4)]
    assert items[3] is None  # not an image at all: dropped by the worker
    assert items[0][0].dim() == 1 and items[1][0].dim() == 3  # JPEG bytes vs decoded PNG
    counter = BadCount()
    payloads, *_ = counter.take(SkipBad(collate_raw)(items))
    decoded = D.decode_images(payloads, "cpu")
    # the corrupt JPEG: one Pillow version opens it lazily and the decoder drops it;
    # another refuses it in the worker already. Either way it is counted once.
    assert counter.seen == 4 and counter.bad == 1 + (items[2] is None)
    good, png = decoded[:2]
    assert items[2] is None or decoded[2] is None
    ref = torch.from_numpy(np.asarray(Image.open(tmp_path / "a" / "good.jpg").convert("RGB")))
    assert (good.permute(1, 2, 0).int() - ref.int()).abs().max() <= 2  # libjpeg vs PIL's
    assert torch.equal(png.permute(1, 2, 0), torch.from_numpy(np.asarray(img)))


def test_training_with_batch_aug_on_cpu_counts_bad_files(tmp_path, shapes_root):
    """A whole run through --batch-aug on (CPU), with 1 loader worker: a corrupt file is
    counted (the count travels back from the worker), and the first loss is within 2% of
    the PIL path's (same draws, same initialisation)."""
    from pretrain.config import PretrainConfig
    from pretrain.trainer import Trainer

    data = tmp_path / "data" / "train"
    for cls in ("circle", "square"):  # 2 x 8 images: 2 steps of 8, one image corrupt
        (data / cls).mkdir(parents=True)
        for src in sorted((shapes_root / "imagefolder" / "train" / cls).glob("*.jpg"))[:8]:
            shutil.copy(src, data / cls)
    sorted((data / "circle").glob("*.jpg"))[0].write_bytes(b"garbage")
    losses = {}
    for mode in ("on", "off"):
        t = Trainer(
            PretrainConfig(
                method="byol",
                arch="resnet18",
                data=str(data.parent),
                output=str(tmp_path / mode),
                epochs=1,
                batch_size=8,
                image_size=32,
                crop_scale=(0.3, 1.0),
                warmup_epochs=0.5,
                workers=1,
                knn_every=0,
                log_every=1,
                max_bad_frac=0.5,
                batch_aug=mode,
                amp="none",  # fp32 on either device: the test compares pipelines, not precision
                options={"proj_hidden": 64, "proj_dim": 16, "pred_hidden": 64},
            )
        )
        assert t.batch_aug == (mode == "on")
        t.fit()
        assert t.bad_images == 1 and (t.global_step, t.images_seen) == (2, 15)
        losses[mode] = [h["train/loss"] for h in t.history if h["type"] == "step"]
    assert abs(losses["on"][0] - losses["off"][0]) < 0.02 * abs(losses["off"][0])
    assert all(np.isfinite(losses["on"]))


def test_batch_aug_refuses_maskco():
    from pretrain.config import PretrainConfig

    with pytest.raises(ValueError, match="--batch-aug off"):
        PretrainConfig(method="maskco", batch_aug="on")


@pytest.mark.parametrize("threaded", [False, True])
def test_prefetcher_order_skips_errors_and_close(threaded):
    """Same items in the same order as a plain loop (None skipped); an error in ``make``
    reaches the consumer; closing mid-way stops the thread."""
    import contextlib
    import threading

    items = list(range(10))
    make = lambda i: None if i % 4 == 3 else torch.tensor([i, i * i])  # noqa: E731
    got = list(D.DevicePrefetcher(items, make, "cpu", threaded=threaded))
    assert [int(t[0]) for t in got] == [i for i in items if i % 4 != 3]
    assert all(int(t[1]) == int(t[0]) ** 2 for t in got)

    def bad(i):
        if i == 5:
            raise ValueError("unreadable batch 5")
        return i

    with pytest.raises(ValueError, match="unreadable batch 5"):
        list(D.DevicePrefetcher(items, bad, "cpu", threaded=threaded))
    before = threading.active_count()
    with contextlib.closing(
        iter(D.DevicePrefetcher(range(10**6), lambda i: i, "cpu", threaded=threaded))
    ) as it:
        assert [next(it) for _ in range(3)] == [0, 1, 2]
    assert threading.active_count() == before  # the worker thread has ended
