"""Attention maps of pretrained backbones, as in CARE's Fig. 4 (Grad-CAM on the last stage).

    python -m pretrain.visualize --weights care_r50.pth byol_r50.pth --images DIR --out maps.png

A self-supervised backbone has no classifier, so the Grad-CAM target is the squared norm of
the pooled res5 feature, s = ||GAP(A)||^2 / 2: its gradient gives channel weights
alpha_k = mean_ij ds/dA_kij = GAP(A)_k / HW, and the map is ReLU(sum_k alpha_k A_k),
upsampled to the image. Each image's maps share one colour scale across checkpoints, so
they can be compared. Any checkpoint ``common.checkpoints`` reads works.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

import torch
import torch.nn.functional as F
from PIL import Image

from common.checkpoints import CheckpointError, read_backbone
from common.cli import InputNotFound, doc_parser, run_cli
from pretrain.data import eval_transform
from pretrain.models import ResNetTrunk


def load_trunk(path: str | Path, allow_pickle: bool = False) -> tuple[ResNetTrunk, str]:
    """A ResNetTrunk with the checkpoint's backbone (any format ``common.checkpoints`` reads)."""
    body = read_backbone(path, allow_pickle=allow_pickle)
    trunk = ResNetTrunk(body.arch.key, stem_relu=body.stem_relu)  # as trained
    missing, unexpected = trunk.load_state_dict(body.tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: backbone incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return trunk.eval(), body.arch.name


def gradcam(trunk: ResNetTrunk, x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, H, W) non-negative maps (unnormalised)."""
    _, a = trunk(x)
    a.retain_grad()
    score = 0.5 * a.mean(dim=(2, 3)).pow(2).sum()
    score.backward()
    weights = a.grad.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    cam = F.relu((weights * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return cam[:, 0].detach()


def list_images(folder: Path, limit: int) -> list[Path]:
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts)
    if not files:
        raise InputNotFound(f"no images (.jpg/.png/...) under {folder}")
    step = max(1, len(files) // limit)
    return files[::step][:limit]


def draw(
    images: list[Path], names: list[str], maps: list[torch.Tensor], inputs: torch.Tensor, out: Path
) -> Path:
    """Grid: one row per image; the input, then one overlay per checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pretrain.data import MEAN, STD

    n, k = len(images), len(maps)
    fig, axes = plt.subplots(n, k + 1, figsize=(2.2 * (k + 1), 2.2 * n), squeeze=False)
    rgb = inputs * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    rgb = rgb.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        scale = max(float(m[i].max()) for m in maps) or 1.0  # shared across checkpoints
        axes[i, 0].imshow(rgb[i])
        axes[i, 0].set_title(images[i].name if i == 0 else "", fontsize=7)
        for j, m in enumerate(maps, start=1):
            axes[i, j].imshow(rgb[i])
            axes[i, j].imshow((m[i] / scale).numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(names[j - 1], fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    p.add_argument("--weights", nargs="+", required=True, help="checkpoints to compare")
    p.add_argument(
        "--images", type=Path, required=True, help="folder of images (searched recursively)"
    )
    p.add_argument("--out", type=Path, default=Path("maps.png"), help="output PNG")
    p.add_argument("--size", type=int, default=224, help="input side in px (224)")
    p.add_argument("--max-images", type=int, default=6, help="rows (6)")
    p.add_argument("--allow-pickle", action="store_true", help="trusted non-tensor checkpoints")
    return p


def main(args: argparse.Namespace) -> Path:
    files = list_images(args.images, args.max_images)
    tf = eval_transform(args.size)
    x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])
    maps, names = [], []
    for w in args.weights:
        trunk, arch = load_trunk(w, args.allow_pickle)
        maps.append(gradcam(trunk, x))
        names.append(f"{Path(w).stem} ({arch})")
    out = draw(files, names, maps, x, args.out)
    print(f"wrote {out} ({len(files)} images x {len(maps)} checkpoints)")
    return out


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
