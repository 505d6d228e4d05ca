"""Backbones, MLP heads and CARE's transformer stream (T-stream).

Backbones are torchvision ResNets built without downloaded weights; their state dict keeps
torchvision names, which is what ``transfer.convert`` reads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common.archs import build_resnet, get_arch
from common.cli import ConfigError


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its classifier.

    ``forward(x)`` returns ``(res4, res5)``: layer3 and layer4 outputs, e.g. (N, 1024, 14, 14)
    and (N, 2048, 7, 7) for ResNet-50 at 224 px; (N, 256, 8, 8) and (N, 512, 4, 4) for
    ``resnet18_cifar`` at 32 px.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        zero_init_residual: bool = False,
        stem_relu: bool | None = None,
    ):
        super().__init__()
        # zero_init_residual: the last BN gamma of every residual block starts at 0 (the
        # SimSiam family's official encoders); CARE / BYOL keep torchvision's default (1)
        net = build_resnet(get_arch(arch), zero_init_residual, stem_relu)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.res4_dim = net.layer4[0].conv1.in_channels  # layer3's output channels
        self.dim = net.fc.in_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        res4 = self.layer3(self.layer2(self.layer1(x)))
        return res4, self.layer4(res4)

    def torchvision_state_dict(self) -> dict[str, torch.Tensor]:
        """The trunk's weights under torchvision ResNet names (no ``fc``), on CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}


class MLP(nn.Module):
    """``Linear(in, hidden) - BN - ReLU - Linear(hidden, out)`` (BYOL / CARE heads, s. 4).

    With ``layers=3`` and ``last_bn=True`` it is SimSiam's projector (no biases before BN,
    the last BN without affine unless ``last_affine``: lightly's CIFAR projector has it);
    ``hidden_bias=False`` drops the hidden Linear's bias (SimSiam's predictor); with
    ``bn=False`` MoCo v2's head (Linear - ReLU - Linear).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int,
        layers: int = 2,
        last_bn: bool = False,
        bn: bool = True,
        hidden_bias: bool | None = None,
        last_affine: bool = False,
    ):
        super().__init__()
        mods: list[nn.Module] = []
        dim = in_dim
        hidden_bias = not last_bn if hidden_bias is None else hidden_bias
        for _ in range(layers - 1):
            mods += [nn.Linear(dim, hidden, bias=hidden_bias)]
            mods += [nn.BatchNorm1d(hidden)] if bn else []
            mods += [nn.ReLU(inplace=True)]
            dim = hidden
        mods.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            mods.append(nn.BatchNorm1d(out_dim, affine=last_affine))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _resize_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """(L, d) learned table -> (length, d) by linear interpolation (identity if equal)."""
    if table.shape[0] == length:
        return table
    t = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear", align_corners=False)
    return t.squeeze(0).t()


def sine_position(h: int, w: int, d: int, device=None) -> torch.Tensor:
    """Fixed 2-D sine-cosine position encoding, (h * w, d): the first d/2 dims encode the
    row, the rest the column, each as [sin(p / T^(2i/k)), cos(p / T^(2i/k))], T = 10000."""
    k = d // 2
    freq = 10000.0 ** (-torch.arange(0, k, 2, device=device, dtype=torch.float32) / k)

    def enc(n: int) -> torch.Tensor:  # (n, k)
        angle = torch.arange(n, device=device, dtype=torch.float32)[:, None] * freq[None]
        return torch.cat([angle.sin(), angle.cos()], dim=1)[:, :k]

    ey, ex = enc(h), enc(w)
    grid = torch.cat([ey[:, None, :].expand(h, w, k), ex[None, :, :].expand(h, w, k)], dim=-1)
    return F.pad(grid, (0, d - 2 * k)).reshape(h * w, d)


class MHSA(nn.Module):
    """Multi-head self-attention over a (N, C, H, W) map, BoTNet style (CARE s. 3.2).

    One 1x1 conv makes q, k, v; q is scaled by d^-0.5; logits = q.k^T + position logits.
    Position encodings (``pos``):
      - "abs": learnable height + width tables (L, d), shared by heads: logits += q.pos^T
        (the official code's choice; since q.(k + pos) = q.k + q.pos it fits fused kernels);
      - "rel": learnable relative tables (2L - 1, d) indexed by (dy, dx) (the paper's text);
      - "sine": fixed 2-D sine-cosine encoding (half the dims for y, half for x, temperature
        10000; ours, for CARE's position-encoding ablation), added like "abs";
      - "none".
    Tables are learned at a nominal size (the 224 px one) and linearly resized to the actual
    feature map, so any input size works.
    """

    def __init__(self, dim: int, heads: int, size: int, pos: str = "abs"):
        super().__init__()
        if dim % heads:
            raise ConfigError(
                f"T-stream width {dim} (--mid-dim) is not divisible by --heads {heads}"
            )
        self.heads, self.head_dim, self.pos = heads, dim // heads, pos
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        d = self.head_dim
        if pos == "abs":
            self.height = nn.Parameter(torch.randn(size, d) * d**-0.5)
            self.width = nn.Parameter(torch.randn(size, d) * d**-0.5)
        elif pos == "rel":
            self.rel_h = nn.Parameter(torch.randn(2 * size - 1, d) * d**-0.5)
            self.rel_w = nn.Parameter(torch.randn(2 * size - 1, d) * d**-0.5)
        elif pos not in ("none", "sine"):
            raise ConfigError(f"unknown position encoding {pos!r} (abs, rel, sine, none)")

    def position(self, h: int, w: int) -> torch.Tensor | None:
        """Position term: (HW, d) for "abs", (HW, HW, d) for "rel", None for "none"."""
        if self.pos == "abs":
            ph, pw = _resize_table(self.height, h), _resize_table(self.width, w)
            return (ph[:, None, :] + pw[None, :, :]).reshape(h * w, -1)
        if self.pos == "sine":
            return sine_position(h, w, self.head_dim, self.qkv.weight.device)
        if self.pos == "rel":
            rh, rw = _resize_table(self.rel_h, 2 * h - 1), _resize_table(self.rel_w, 2 * w - 1)
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            ys, xs = ys.reshape(-1).to(rh.device), xs.reshape(-1).to(rh.device)
            return rh[ys[:, None] - ys[None, :] + h - 1] + rw[xs[:, None] - xs[None, :] + w - 1]
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(n, 3, self.heads, self.head_dim, h * w).unbind(1)
        q = q.transpose(-1, -2) * self.head_dim**-0.5  # (N, heads, HW, d)
        k, v = k.transpose(-1, -2), v.transpose(-1, -2)
        pos = self.position(h, w)
        if pos is None:
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        elif pos.dim() == 2:  # abs / sine: q.(k + pos) = q.k + q.pos, one fused attention call
            out = F.scaled_dot_product_attention(q, k + pos.to(k.dtype), v, scale=1.0)
        else:
            logits = q @ k.transpose(-1, -2) + torch.einsum("bnid,ijd->bnij", q, pos.to(q.dtype))
            out = logits.softmax(-1) @ v
        return out.transpose(-1, -2).reshape(n, c, h, w)


class BoTBlock(nn.Module):
    """1x1 conv to ``mid``, BN, ReLU, MHSA, [2x2 avgpool], BN, ReLU, 1x1 conv to ``out``, BN,
    + shortcut, ReLU. The first block downsamples (3x3 stride-2 conv shortcut)."""

    def __init__(
        self, in_dim: int, out_dim: int, mid: int, heads: int, size: int, pos: str, downsample: bool
    ):
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(in_dim, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True)
        )
        self.attn = MHSA(mid, heads, size, pos)
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if downsample else nn.Identity()
        self.post = nn.Sequential(
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_dim, 1, bias=False),
            nn.BatchNorm2d(out_dim),
        )
        self.shortcut = (
            nn.Sequential(
                nn.Conv2d(in_dim, out_dim, 3, stride=2 if downsample else 1, padding=1, bias=False),
                nn.BatchNorm2d(out_dim),
                nn.ReLU(inplace=True),
            )
            if downsample or in_dim != out_dim
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.post(self.pool(self.attn(self.reduce(x))))
        return F.relu(y + self.shortcut(x))


class TStream(nn.Module):
    """CARE's transformer stream (official code, docs/methods.md).

    ``design="parallel"`` (the official code): on res4, in parallel with res5; (N, C4, H, W)
    -> (N, out_dim, ceil(H/2), ceil(W/2)), the first block downsampling. ``"sequential"``
    (the paper's ablation; its layout is ours): on res5's output, (N, C5, H, W) -> (N,
    out_dim, H, W), no block downsampling. ``nominal`` is the input side at the paper's 224 px
    (14 for res4, 7 for res5), the size of the learned position tables.
    Init as the official ResNet init loop leaves it: every Conv2d kaiming-normal (fan_out,
    ReLU gain), every BatchNorm gamma 1 and beta 0.
    """

    def __init__(
        self,
        in_dim: int = 1024,
        out_dim: int = 2048,
        n_blocks: int = 5,
        mid: int = 512,
        heads: int = 4,
        pos: str = "abs",
        nominal: int = 14,
        design: str = "parallel",
    ):
        super().__init__()
        if design not in ("parallel", "sequential"):
            raise ConfigError(f"T-stream design {design!r}: parallel or sequential")
        down = design == "parallel"
        after = math.ceil(nominal / 2) if down else nominal
        self.blocks = nn.Sequential(
            *[
                BoTBlock(
                    in_dim if i == 0 else out_dim,
                    out_dim,
                    mid,
                    heads,
                    nominal if i == 0 else after,
                    pos,
                    downsample=down and i == 0,
                )
                for i in range(n_blocks)
            ]
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
