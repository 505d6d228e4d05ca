"""UPerNet on a torchvision-stem ResNet, as the CSAIL toolkit (mit_semseg) builds it.

``UPerNetHead`` (detectron2's ``SEM_SEG_HEADS_REGISTRY``): the pyramid pooling module on
res5 (adaptive average pools of 1, 2, 3, 6 cells, each 1x1 conv-BN-ReLU to 512 channels,
upsampled back and concatenated with res5, then 3x3 conv-BN-ReLU to ``CONVS_DIM``), an FPN
(1x1 conv-BN-ReLU laterals on res2..res4, top-down bilinear sum, 3x3 conv-BN-ReLU outputs),
every level upsampled to stride 4 and concatenated, 3x3 conv-BN-ReLU, 1x1 conv to the
classes. Convolutions are bias-free except the classifier; He-normal init (fan-in, gain
sqrt(2)), BatchNorm weight 1 / bias 1e-4, the classifier's bias left at PyTorch's default:
the toolkit's ``weights_init``.

``UPerNetSegmentor`` (detectron2's ``META_ARCH_REGISTRY``): detectron2's ResNet backbone
(its ``BasicStem`` is torchvision's stem, so converted self-supervised weights load tensor by
tensor) + the head. Every BatchNorm (backbone and head) uses ``MODEL.UPERNET.BN_MOMENTUM``
(the toolkit's synchronised BN: 0.001). Training: each group of the inputs (their "group",
the toolkit's per-GPU batch) padded to a multiple of 32 with zeros after normalisation, its
stride-4 labels padded with ``MODEL.UPERNET.BATCH_PAD_LABEL`` (the toolkit labels batch
padding class 0; 255 ignores it), cross-entropy (= NLL of log-softmax) ignoring 255 averaged
over the group's pixels; the loss is the mean over the groups, as the toolkit's
``loss.mean()`` over its GPUs' losses. Inference: the softmax of each of the input's
scales, upsampled to the image's full size, averaged (``multiscale_probabilities``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import (
    META_ARCH_REGISTRY,
    SEM_SEG_HEADS_REGISTRY,
    build_backbone,
    build_sem_seg_head,
)
from detectron2.structures import ImageList
from torch import nn

IGNORE = 255  # the ignore label of detectron2's ADE20K annotations


def conv_bn_relu(c_in: int, c_out: int, k: int, norm: str) -> Conv2d:
    """k x k conv (no bias, 'same' padding) -> norm -> ReLU, as one detectron2 ``Conv2d``."""
    return Conv2d(
        c_in, c_out, k, padding=k // 2, bias=False, norm=get_norm(norm, c_out), activation=F.relu
    )


def toolkit_init(module: nn.Module) -> None:
    """The toolkit's ``weights_init``: He-normal conv weights, BN weight 1 and bias 1e-4."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, 1e-4)


def set_bn_momentum(module: nn.Module, momentum: float) -> int:
    """Set every BatchNorm's momentum (PyTorch convention); returns how many."""
    n = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
            n += 1
    return n


@SEM_SEG_HEADS_REGISTRY.register()
class UPerNetHead(nn.Module):
    """features {res2..res5: (N, C_s, H/s, W/s)} -> logits (N, num_classes, H/4, W/4)."""

    def __init__(self, cfg, input_shape: dict[str, ShapeSpec]):
        super().__init__()
        self.in_features = list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)  # fine to coarse
        dim = cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM  # fpn_dim, 512
        norm = cfg.MODEL.SEM_SEG_HEAD.NORM
        ppm_dim = cfg.MODEL.UPERNET.PPM_DIM
        channels = [input_shape[f].channels for f in self.in_features]
        top = channels[-1]
        self.pool_scales = tuple(cfg.MODEL.UPERNET.POOL_SCALES)
        self.ppm = nn.ModuleList(conv_bn_relu(top, ppm_dim, 1, norm) for _ in self.pool_scales)
        self.ppm_out = conv_bn_relu(top + len(self.pool_scales) * ppm_dim, dim, 3, norm)
        self.lateral = nn.ModuleList(conv_bn_relu(c, dim, 1, norm) for c in channels[:-1])
        self.fpn_out = nn.ModuleList(conv_bn_relu(dim, dim, 3, norm) for _ in channels[:-1])
        self.fuse = conv_bn_relu(len(channels) * dim, dim, 3, norm)
        self.predictor = nn.Conv2d(dim, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 1)
        toolkit_init(self)  # the classifier's bias keeps PyTorch's default init

    def pyramid_pooling(self, x: torch.Tensor) -> torch.Tensor:
        """res5 (N, C, h, w) -> (N, dim, h, w)."""
        size = x.shape[-2:]
        out = [x]
        for scale, conv in zip(self.pool_scales, self.ppm):
            pooled = F.interpolate(
                F.adaptive_avg_pool2d(x, scale), size, mode="bilinear", align_corners=False
            )
            out.append(conv(pooled))
        return self.ppm_out(torch.cat(out, 1))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        xs = [features[f] for f in self.in_features]
        f = self.pyramid_pooling(xs[-1])
        levels = [f]
        for i in reversed(range(len(xs) - 1)):
            lateral = self.lateral[i](xs[i])
            f = lateral + F.interpolate(
                f, size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
            levels.append(self.fpn_out[i](f))
        levels.reverse()  # stride 4 first
        size = levels[0].shape[-2:]
        fused = [levels[0]] + [
            F.interpolate(x, size, mode="bilinear", align_corners=False) for x in levels[1:]
        ]
        return self.predictor(self.fuse(torch.cat(fused, 1)))


def multiscale_probabilities(
    logits_per_scale: list[torch.Tensor], size: tuple[int, int]
) -> torch.Tensor:
    """The toolkit's multi-scale test: each scale's logits (1, C, h_s, w_s) upsampled
    (bilinear) to ``size`` = (H, W), softmax over classes, averaged -> (C, H, W)."""
    probs = None
    for logits in logits_per_scale:
        up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        p = F.softmax(up, dim=1)[0]
        probs = p if probs is None else probs + p
    return probs / len(logits_per_scale)


def pixel_counts(logits: torch.Tensor, labels: torch.Tensor, ignore: int) -> tuple[int, int]:
    """(correct, labelled) stride-4 pixels of (N, C, h, w) logits against (N, h, w) labels
    (batch padding counts as it is labelled), for the toolkit's training "Accuracy"."""
    with torch.no_grad():
        valid = labels != ignore
        correct = (logits.argmax(1) == labels) & valid
        return int(correct.sum()), int(valid.sum())


def log_pixel_accuracy(correct: int, labelled: int) -> None:
    """The training pixel accuracy x100, to detectron2's event storage when training."""
    from detectron2.utils.events import get_event_storage

    try:
        storage = get_event_storage()
    except AssertionError:  # not inside a trainer
        return
    storage.put_scalar("pixel_acc", 100 * correct / max(labelled, 1))


def split_groups(batched_inputs: list[dict]) -> list[list[dict]]:
    """The inputs by their "group" key in order of appearance (no key: one group)."""
    groups: dict = {}
    for x in batched_inputs:
        groups.setdefault(x.get("group", 0), []).append(x)
    return list(groups.values())


@META_ARCH_REGISTRY.register()
class UPerNetSegmentor(nn.Module):
    """detectron2 ResNet + ``UPerNetHead``; see the module's docstring.

    Training inputs: dicts with "image" (3, h, w) uint8 RGB and "sem_seg" (ceil(h/4),
    ceil(w/4)) int64 (ignore 255). Inference inputs: "images", a list of (3, h_s, w_s)
    uint8 tensors (one per test scale), and the full "height" / "width"; output
    ``{"sem_seg": (C, height, width)}`` averaged probabilities.
    """

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.sem_seg_head = build_sem_seg_head(cfg, self.backbone.output_shape())
        self.size_divisibility = cfg.MODEL.UPERNET.SIZE_DIVISIBILITY
        self.label_stride = cfg.INPUT.LABEL_DOWNSAMPLE
        self.pad_label = cfg.MODEL.UPERNET.BATCH_PAD_LABEL
        self.ignore_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        set_bn_momentum(self, cfg.MODEL.UPERNET.BN_MOMENTUM)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image.to(self.device, self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised, H and W multiples of 32 -> (N, C, H/4, W/4)."""
        return self.sem_seg_head(self.backbone(images))

    def batch(self, batched_inputs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images padded with zeros (after normalisation) to a multiple of 32 -> (N, 3, H, W);
        labels padded with the batch padding label -> (N, H/4, W/4)."""
        images = ImageList.from_tensors(
            [self.normalize(x["image"]) for x in batched_inputs], self.size_divisibility, 0.0
        ).tensor
        h, w = images.shape[-2] // self.label_stride, images.shape[-1] // self.label_stride
        labels = torch.full((len(batched_inputs), h, w), self.pad_label, dtype=torch.long)
        for i, x in enumerate(batched_inputs):
            seg = x["sem_seg"]
            labels[i, : seg.shape[0], : seg.shape[1]] = seg
        return images, labels.to(self.device)

    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return [self.predict(x) for x in batched_inputs]
        losses, correct, labelled = [], 0, 0
        for group in split_groups(batched_inputs):
            images, labels = self.batch(group)
            logits = self.logits(images)
            losses.append(F.cross_entropy(logits, labels, ignore_index=self.ignore_value))
            c, n = pixel_counts(logits, labels, self.ignore_value)
            correct, labelled = correct + c, labelled + n
        log_pixel_accuracy(correct, labelled)
        return {"loss_sem_seg": torch.stack(losses).mean()}

    def predict(self, x: dict) -> dict:
        size = (int(x["height"]), int(x["width"]))
        per_scale = [self.logits(self.normalize(im)[None]) for im in x["images"]]
        return {"sem_seg": multiscale_probabilities(per_scale, size)}
