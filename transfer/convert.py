"""Convert a pretraining checkpoint to Detectron2's weight format, verified.

Accepted inputs (detected from the keys, never from the file name):

- this suite's pretraining checkpoints (``format: care-suite/pretrain``; the online backbone as
  a torchvision ResNet state dict under ``backbone``, metadata under ``meta``);
- plain torchvision ResNet state dicts (optionally under ``state_dict`` / ``model``);
- MoCo-style checkpoints (``state_dict`` with ``module.encoder_q.``);
- the official CARE release (``model`` with ``module.student_encoder.{conv1,...,layer4}``;
  ``module.student_encoder.{trans,fc1,fc2}`` and ``module.teacher_encoder`` are dropped);
- DINO-style ``teacher`` / ``student`` dicts (the teacher's ``backbone.`` body);
- VISSL checkpoints (``classy_state_dict -> base_model -> model -> trunk``, names under
  ``_feature_blocks.``): nested dicts are read with their keys joined by '.';
- any checkpoint with one unambiguous prefix before a torchvision ResNet body
  (or pick one with ``--prefix``);
- an existing Detectron2 ``.pkl`` (passed through unchanged).

ResNet-18/34/50/101/152 and ResNet-50 width x2 (torchvision ``wide_resnet50_2``), and the
CIFAR ResNet-18 (3x3 stride-1 stem, no max-pool): no Detectron2 stem holds that, so its file
(same names) serves the classification and recognition runners only, checked by an exact
round trip of every tensor to the torchvision ResNet instead of Detectron2's features.

Output: a pickle ``{"model": {name: ndarray}, "__author__": str, "matching_heuristics": True,
"suite_meta": {...}}``. Before anything is written: every Detectron2 backbone tensor (stem,
res2-res5) is filled exactly once, every ResNet body tensor of the input is used, shapes
agree, and a Detectron2 backbone loaded from the result reproduces the torchvision ResNet's
res2..res5 features (eval mode, max relative difference <= 1e-4).

CLI: ``python -m transfer.convert care_r50.pth care_r50.pkl``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from common.archs import Arch, build_resnet
from common.atomic import atomic_pickle
from common.checkpoints import (
    AUTHOR,
    SUITE_FORMAT,
    CheckpointError,
    d2_to_torchvision_name,
    extract_body,
    file_sha256,
    infer_arch,
    is_detectron2_pickle,
    load_any,
    torchvision_to_d2_name,
)
from common.cli import UserError, run_cli

__all__ = [
    "AUTHOR",
    "SUITE_FORMAT",
    "ConversionError",
    "Conversion",
    "convert_file",
    "convert_state",
    "d2_to_torchvision_name",
    "extract_body",
    "file_sha256",
    "infer_arch",
    "is_detectron2_pickle",
    "load_any",
    "torchvision_to_d2_name",
]

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max |d2 - torchvision| / max |torchvision|, per stage
ConversionError = CheckpointError  # the converter's errors are checkpoint errors


@dataclass
class Conversion:
    """Result of converting one checkpoint (the pickle content is ``payload()``)."""

    model: dict[str, np.ndarray]
    arch: Arch
    source_format: str
    prefix: str
    mapping: list[tuple[str, str]]  # (input key, detectron2 key)
    dropped: list[str]
    meta: dict = field(default_factory=dict)
    max_rel_diff: float | None = None

    def payload(self) -> dict:
        return {
            "model": self.model,
            "__author__": AUTHOR,
            "matching_heuristics": True,
            "suite_meta": {
                **self.meta,
                "arch": self.arch.name,
                "source_format": self.source_format,
                "max_rel_diff": self.max_rel_diff,
            },
        }


def build_d2_backbone(arch: Arch, norm: str = "BN"):
    """Detectron2's ResNet with the protocol's settings (STRIDE_IN_1X1 False), res2..res5."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = arch.depth
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = arch.width_per_group
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = arch.res2_channels
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def build_torchvision_resnet(arch: Arch) -> torch.nn.Module:
    import torchvision

    return getattr(torchvision.models, arch.torchvision)(weights=None)


@torch.no_grad()
def compare_features(
    body: Mapping[str, torch.Tensor], model: Mapping[str, np.ndarray], arch: Arch, size: int = 96
) -> float:
    """Max relative difference of res2..res5 between torchvision and Detectron2 (eval)."""
    tv = build_torchvision_resnet(arch).eval()
    missing, unexpected = tv.load_state_dict(dict(body), strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ConversionError(
            f"torchvision {arch.torchvision} refused the body: "
            f"missing {missing[:10]}, unexpected {unexpected[:10]}"
        )
    d2 = build_d2_backbone(arch).eval()
    d2.load_state_dict({k: torch.from_numpy(v) for k, v in model.items()}, strict=True)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    feats = d2(x)
    h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    worst = 0.0
    for i, layer in enumerate((tv.layer1, tv.layer2, tv.layer3, tv.layer4), start=2):
        h = layer(h)
        ref = h.double()
        diff = (feats[f"res{i}"].double() - ref).abs().max().item()
        worst = max(worst, diff / max(ref.abs().max().item(), 1e-12))
    return worst


def convert_state(obj: Mapping, prefix: str | None = None, verify: bool = True) -> Conversion:
    """Convert a loaded checkpoint dict (see module docstring); raises ConversionError."""
    b = extract_body(obj, prefix)
    body, arch, pre, label, where, dropped, meta = (
        b.tensors,
        b.arch,
        b.prefix,
        b.label,
        b.where,
        b.dropped,
        b.meta,
    )
    model, mapping = renamed_numpy(body, pre)
    check_against_arch(model, arch, pre)
    conv = Conversion(model, arch, f"{label} ({where})", pre, mapping, dropped, meta)
    if arch.stem != "imagenet":  # no Detectron2 model to compare: an exact round trip
        back = {d2_to_torchvision_name(n): v for n, v in model.items()}
        wrong = [k for k, v in body.items() if not np.array_equal(back.get(k), v.cpu().numpy())]
        if wrong:
            raise ConversionError(f"round trip of the {arch.name} tensors failed: {wrong[:5]}")
        return conv
    if verify:
        conv.max_rel_diff = compare_features(body, model, arch)
        if not conv.max_rel_diff <= TOLERANCE:
            raise ConversionError(
                f"numerical check failed: Detectron2 features differ from torchvision's by "
                f"{conv.max_rel_diff:.3g} (relative) > {TOLERANCE}"
            )
    return conv


def renamed_numpy(body: Mapping, pre: str) -> tuple[dict, list]:
    """torchvision-named tensors -> (Detectron2 name -> numpy array (float32 for floats),
    [(source name, Detectron2 name)]); two sources mapping to one name is an error."""
    model, mapping, seen = {}, [], {}
    for k in sorted(body):
        name = torchvision_to_d2_name(k)
        if name in seen:
            raise ConversionError(f"{pre}{k} and {pre}{seen[name]} both map to {name}")
        seen[name] = k
        t = body[k].detach().cpu()
        model[name] = (t.float() if t.is_floating_point() else t).numpy()
        mapping.append((pre + k, name))
    return model, mapping


def check_against_arch(model: dict, arch, pre: str) -> None:
    """``model`` (Detectron2 names) has exactly ``arch``'s tensors and shapes; the optional
    BN step counters are filled in. ``ConversionError`` names what is missing or odd."""
    if arch.stem != "imagenet":  # the torchvision ResNet's own tensors, under D2's names
        reference = build_resnet(arch).state_dict()
        expected = {torchvision_to_d2_name(k): tuple(v.shape) for k, v in reference.items()
                    if not k.startswith("fc.")}  # fmt: skip
    else:
        expected = {k: tuple(v.shape) for k, v in build_d2_backbone(arch).state_dict().items()}
    # num_batches_tracked is optional in inputs (counts steps only)
    missing = sorted(
        k for k in expected if k not in model and not k.endswith("num_batches_tracked")
    )
    unexpected = sorted(k for k in model if k not in expected)
    if missing or unexpected:
        raise ConversionError(
            f"{arch.name} body under prefix {pre!r} is incomplete or unusual: "
            f"missing {len(missing)} Detectron2 tensors {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}; unexpected {unexpected[:8]}. "
            "Is the checkpoint truncated, or of another architecture?"
        )
    bad = [
        f"{k}: {model[k].shape} vs {expected[k]}"
        for k in model
        if tuple(model[k].shape) != expected[k]
    ]
    if bad:
        raise ConversionError(f"shape mismatch for {arch.name}: {bad[:8]}")
    for k in expected:  # fill optional counters so the state dict is complete
        if k.endswith("num_batches_tracked") and k not in model:
            model[k] = np.zeros((), dtype=np.int64)


def convert_file(
    src: str | Path,
    dst: str | Path,
    prefix: str | None = None,
    allow_pickle: bool = False,
    verify: bool = True,
) -> dict:
    """Convert ``src`` into ``dst`` (written atomically, only if every check passed).

    Returns a report: format, arch, max_rel_diff, number of tensors, dropped keys, meta.
    """
    src, dst = Path(src), Path(dst)
    obj = load_any(src, allow_pickle=allow_pickle)
    sha = file_sha256(src)
    if is_detectron2_pickle(obj):
        payload = dict(obj)
        payload.setdefault("__author__", AUTHOR)
        payload.setdefault("matching_heuristics", True)
        report = {
            "source_format": "Detectron2 pickle (passed through)",
            "arch": None,
            "max_rel_diff": None,
            "tensors": len(obj["model"]),
            "dropped": [],
            "meta": dict(obj.get("suite_meta", {})),
        }
    else:
        conv = convert_state(obj, prefix=prefix, verify=verify)
        conv.meta.update(source=str(src), source_sha256=sha)
        payload = conv.payload()
        report = {
            "source_format": conv.source_format,
            "arch": conv.arch.name,
            "max_rel_diff": conv.max_rel_diff,
            "tensors": len(conv.model),
            "dropped": conv.dropped,
            "meta": payload["suite_meta"],
        }
        for k, name in conv.mapping:
            logger.debug("%s -> %s", k, name)
    atomic_pickle(dst, payload)
    report.update(source=str(src), source_sha256=sha, output=str(dst))
    return report


def summarise(report: dict) -> str:
    dropped = report["dropped"]
    groups = sorted(
        {
            k.split(".")[0] if not k.startswith("module.") else ".".join(k.split(".")[:2])
            for k in dropped
        }
    )
    lines = [
        f"read     {report['source']} ({report['source_format']})",
        f"arch     {report['arch']}",
        f"tensors  {report['tensors']} -> {report['output']}",
    ]
    if report["max_rel_diff"] is not None:
        lines.append(
            f"check    res2..res5 match torchvision: max relative diff "
            f"{report['max_rel_diff']:.2e} (<= {TOLERANCE})"
        )
    lines.append(
        f"dropped  {len(dropped)} tensors not in the ResNet body"
        + (f": {', '.join(groups)}" if groups else "")
    )
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Convert a pretraining checkpoint (care-suite, "
        "torchvision, MoCo, CARE release, Detectron2 .pkl) to "
        "Detectron2's format, with a numerical check."
    )
    p.add_argument("src", type=Path, help="input checkpoint (.pth/.pt/.tar/.pkl)")
    p.add_argument("dst", type=Path, help="output Detectron2 pickle (.pkl)")
    p.add_argument(
        "--prefix",
        default=None,
        help="key prefix of the ResNet body when several are present "
        "(e.g. 'module.encoder_q.'); default: detected",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow torch files holding arbitrary Python objects (trusted files)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the numerical torchvision-vs-Detectron2 check (not advised)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every key's mapping")
    return p


def main(args: argparse.Namespace) -> dict:
    """Convert ``args.src`` to ``args.dst``; a ``CheckpointError`` says nothing was written."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        report = convert_file(
            args.src,
            args.dst,
            prefix=args.prefix,
            allow_pickle=args.allow_pickle,
            verify=not args.no_verify,
        )
    except UserError as e:
        raise type(e)(f"{e}; nothing was written") from e
    print(summarise(report))
    return report


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
