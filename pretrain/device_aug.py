"""Decoding and augmentation on the training device, batched (``--batch-aug``).

The loader workers only read each file's bytes and draw its views' random choices
(``ViewTransform.draw``: the same draws, from the same per-sample seeds, as the PIL path).
On the device, ``decode_images`` decodes the JPEGs in one call (nvjpeg on CUDA) and
``DeviceAugment`` makes each view: a per-image resized crop (antialiased), then
flip, colour jitter (each sample's own order), grayscale, Gaussian blur and solarize on
the whole batch at once, then normalisation. A 16-core PIL pipeline tops out near
770 images/s (docs/performance.md), below what one H100 trains at. On CUDA, ``DevicePrefetcher``
makes the next batch's views in a background thread on its own stream while the current
training step runs.

Differences from the PIL path, by design: values stay float between ops (PIL rounds to
uint8 after each), the crop resize is torch's antialiased one, and the blur is an exact
Gaussian (kernel 2 * ceil(3 sigma) + 1, reflect padding) where PIL's is an approximation.
``tests/test_device_aug.py`` compares each op with torchvision's functional op under the
same draws, and the whole view with the PIL path's.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from pretrain.data import MEAN, STD, AugConfig, Payloads

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def decode_images(
    payloads: list[torch.Tensor], device: str | torch.device
) -> list[torch.Tensor | None]:
    """Payloads -> images (3, H, W) uint8 on ``device``; None where one cannot be decoded.

    A payload is either a JPEG file's bytes (1-D uint8, decoded here, all in one
    ``decode_jpeg`` call: nvjpeg's batched decode on CUDA) or an image the worker already
    decoded (3, H, W) uint8 (other formats, CMYK JPEGs). If the batched call fails (a
    corrupt file), each JPEG is decoded alone so that only the bad ones are lost.
    """
    if isinstance(payloads, Payloads):
        payloads = payloads.unpack()
    out: list[torch.Tensor | None] = [None] * len(payloads)
    jpeg = [i for i, p in enumerate(payloads) if p.dim() == 1]
    for i, p in enumerate(payloads):
        if p.dim() == 3:
            out[i] = p.to(device, non_blocking=True)
    if not jpeg:
        return out
    if torch.device(device).type == "cuda":
        # nvJPEG's hardware decoder can write its outputs (fresh blocks of the caching
        # allocator) before work queued on the caller's stream has read them
        # (pytorch/vision#9606, meta-pytorch/torchcodec#1634). Under DevicePrefetcher the
        # current stream is the prefetch thread's own, so this waits only for the previous
        # batch's augmentation, not for the training step.
        torch.cuda.current_stream(device).synchronize()
    try:
        decoded = decode_jpeg([payloads[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        for i, img in zip(jpeg, decoded):
            out[i] = img
    except RuntimeError:
        for i in jpeg:
            out[i] = _decode_one(payloads[i], device)
    return out


def _decode_one(data: torch.Tensor, device) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        try:  # libjpeg on the CPU accepts some files nvjpeg refuses
            return decode_image(data, mode=ImageReadMode.RGB).to(device)
        except RuntimeError:
            return None


def gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (N, 1, H, W) of RGB images (N, 3, H, W)."""
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness, one factor per image: x (N, 3, H, W), f (N,)."""
    return _blend(x, torch.zeros_like(x), f)


def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """adjust_contrast: blend with the image's mean luma."""
    return _blend(x, gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """adjust_saturation: blend with the luma image."""
    return _blend(x, gray(x), f)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB (N, 3, H, W) in [0, 1] -> HSV with hue in [0, 1)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV (N, 3, H, W), hue in [0, 1) -> RGB."""
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    table = torch.stack(
        [
            torch.stack(c, 1)
            for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
        ],
        1,
    )
    return table.gather(1, i[:, None, None].expand(-1, 1, 3, -1, -1)).squeeze(1)


def hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """adjust_hue: shift the hue by f (N,) in [-0.5, 0.5]."""
    hsv = rgb_to_hsv(x)
    hsv[:, 0] = torch.remainder(hsv[:, 0] + f.view(-1, 1, 1), 1.0)
    return hsv_to_rgb(hsv)


JITTER = (brightness, contrast, saturation, hue)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (pixels) per image: x (N, C, H, W), sigma (N,).

    Kernel size 2 * ceil(3 * max sigma) + 1 (at most 2 * min(H, W) - 1), reflect padding:
    per image, what ``torchvision.transforms.functional.gaussian_blur`` gives with that
    kernel size. One grouped convolution per direction for the whole batch.
    """
    n, c, hgt, wid = x.shape
    k = min(2 * math.ceil(3 * float(sigma.max())) + 1, 2 * min(hgt, wid) - 1)
    half = k // 2
    t = torch.arange(k, device=x.device, dtype=x.dtype) - half
    w = torch.exp(-0.5 * (t[None] / sigma.to(x.dtype)[:, None]) ** 2)
    w = (w / w.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N * C, k)
    y = F.pad(x.reshape(1, n * c, hgt, wid), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, w[:, None, None, :], groups=n * c)
    y = F.conv2d(y, w[:, None, :, None], groups=n * c)
    return y.view(n, c, hgt, wid)


def resized_crop(
    img: torch.Tensor, crop: list[int], size: int, mode: str = "bilinear"
) -> torch.Tensor:
    """(3, H, W) uint8 or float 0-255 -> the crop (top, left, h, w) resized to (3, size,
    size), float in 0-255 (``mode`` bilinear or bicubic, antialiased as PIL; not clamped:
    bicubic overshoots)."""
    top, left, h, w = crop
    x = img[None, :, top : top + h, left : left + w]
    x = F.interpolate(
        x if x.is_floating_point() else x.float(),
        size=(size, size),
        mode=mode,
        antialias=True,
        align_corners=False,
    )
    return x[0]


class DeviceAugment:
    """The views of a batch, made on the images' device from the workers' draws.

    ``__call__(images, params)``: images a list of N (3, H, W) uint8 tensors; params one
    ViewParams dict per view, each value batched over the N images (default_collate of
    ``ViewTransform.draw``). Returns one (N, 3, S, S) float tensor per view, normalised.
    """

    def __init__(self, views: list[AugConfig]):
        self.views = views
        self.active = [v.build().jitter_active for v in views]
        self._norm: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """MEAN and STD as (1, 3, 1, 1) tensors on ``device``, made once per device."""
        if device not in self._norm:
            self._norm[device] = (
                torch.tensor(MEAN, device=device).view(1, 3, 1, 1),
                torch.tensor(STD, device=device).view(1, 3, 1, 1),
            )
        return self._norm[device]

    def __call__(
        self, images: list[torch.Tensor], params: list[dict[str, torch.Tensor]]
    ) -> list[torch.Tensor]:
        out = []
        floats = [img.float() for img in images]  # once for all views
        for cfg, active, p in zip(self.views, self.active, params):
            crops = p["crop"].tolist()
            x = torch.stack(
                [resized_crop(img, c, cfg.size, cfg.interpolation) for img, c in zip(floats, crops)]
            )
            x = x.div_(255).clamp_(0, 1)
            x = photometric(x, p, list(active))
            mean, std = self._mean_std(x.device)
            out.append((x - mean) / std)
        return out


def _where(mask: torch.Tensor, device) -> torch.Tensor | None:
    """Indices of the true entries (computed on the CPU: no device sync), or None."""
    idx = mask.nonzero().flatten()
    return idx.to(device, non_blocking=True) if len(idx) else None


def photometric(x: torch.Tensor, p: dict[str, torch.Tensor], active: list[bool]) -> torch.Tensor:
    """Flip, jitter, grayscale, blur, solarize of a batch x (N, 3, S, S) in [0, 1] under
    the draws ``p`` (CPU tensors batched over N); ``active[i]``: jitter op i has a range.
    """
    dev = x.device
    flip = _where(p["flip"], dev)
    if flip is not None:
        x[flip] = x[flip].flip(-1)
    factors = p["factors"].to(dev, non_blocking=True)
    for pos in range(4):  # each sample applies its ops in its own order
        for op in range(4):
            if not active[op]:
                continue
            idx = _where(p["jitter"] & (p["order"][:, pos] == op), dev)
            if idx is not None:
                x[idx] = JITTER[op](x[idx], factors[idx, op])
    idx = _where(p["gray"], dev)
    if idx is not None:
        x[idx] = gray(x[idx]).expand(-1, 3, -1, -1)
    blur = p["sigma"] > 0
    idx = _where(blur, dev)
    if idx is not None:
        x[idx] = gaussian_blur(x[idx], p["sigma"][blur].to(dev, non_blocking=True))
    idx = _where(p["solarize"], dev)
    if idx is not None:
        y = x[idx]
        x[idx] = torch.where(y >= 128 / 255, 1 - y, y)
    return x


class DevicePrefetcher:
    """Iterates ``loader`` and yields ``make(item)``, up to ``depth`` batches ahead.

    Threaded (the default on CUDA), a background thread runs ``make`` (decoding,
    augmentation, host-to-device copies) on its own CUDA stream while the training step of
    the previous batch runs; each yielded tensor is then recorded on the consumer's stream,
    so the allocator never reuses it under a running step. Otherwise ``make`` runs inline.
    Items for which ``make`` returns None are skipped (yielded as None with ``skip_none``
    False: the consumer decides, e.g. with the other ranks); an exception in ``make`` is
    raised in the consumer; closing the generator (``contextlib.closing``) stops the thread.
    """

    def __init__(
        self,
        loader: Iterable,
        make: Callable,
        device: str | torch.device,
        depth: int = 2,
        threaded: bool | None = None,
        skip_none: bool = True,
    ):
        self.loader, self.make, self.depth, self.skip_none = loader, make, depth, skip_none
        self.device = torch.device(device)
        self.threaded = self.device.type == "cuda" if threaded is None else threaded

    def __iter__(self) -> Iterator:
        return self._threaded() if self.threaded else self._inline()

    def _inline(self) -> Iterator:
        for item in self.loader:
            out = self.make(item)
            if out is not None or not self.skip_none:
                yield out

    def _work(self, q: queue.Queue, stop: threading.Event, stream) -> None:
        """The thread: make each item on ``stream``, hand it over with its ready event."""
        try:
            with contextlib.ExitStack() as ctx:
                if stream is not None:
                    ctx.enter_context(torch.cuda.device(self.device))
                    ctx.enter_context(torch.cuda.stream(stream))
                for item in self.loader:
                    if stop.is_set():
                        return
                    out = self.make(item)
                    if out is None and self.skip_none:
                        continue
                    done = None
                    if stream is not None and out is not None:
                        done = torch.cuda.Event()
                        done.record(stream)
                    q.put(("item", (out, done)))
            q.put(("end", None))
        except BaseException as e:  # handed to the consumer, raised there
            q.put(("error", e))

    def _threaded(self) -> Iterator:
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        thread = threading.Thread(
            target=self._work, args=(q, stop, stream), name="device-prefetch", daemon=True
        )
        thread.start()
        try:
            while True:
                kind, payload = q.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise payload
                out, done = payload
                if done is not None:
                    consumer = torch.cuda.current_stream(self.device)
                    consumer.wait_event(done)
                    _record(out, consumer)
                yield out
        finally:
            stop.set()
            while thread.is_alive():  # unblock a pending put, let the thread see ``stop``
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
            thread.join()


def _record(obj, stream: torch.cuda.Stream) -> None:
    """``record_stream`` on every CUDA tensor in a nest of lists / tuples."""
    if isinstance(obj, torch.Tensor):
        if obj.is_cuda:
            obj.record_stream(stream)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _record(o, stream)
