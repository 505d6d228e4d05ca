"""Convert a pretraining checkpoint to Detectron2's weight format, verified.

Accepted inputs (detected from the keys, never from the file name):

- this suite's pretraining checkpoints (``format: care-suite/pretrain``; the online backbone as
  a torchvision ResNet state dict under ``backbone``, metadata under ``meta``);
- plain torchvision ResNet state dicts (optionally under ``state_dict`` / ``model``);
- MoCo-style checkpoints (``state_dict`` with ``module.encoder_q.``);
- the official CARE release (``model`` with ``module.student_encoder.{conv1,...,layer4}``;
  ``module.student_encoder.{trans,fc1,fc2}`` and ``module.teacher_encoder`` are dropped);
- any checkpoint with one unambiguous prefix before a torchvision ResNet body
  (or pick one with ``--prefix``);
- an existing Detectron2 ``.pkl`` (passed through unchanged).

ResNet-18/34/50/101/152 and ResNet-50 width x2 (torchvision ``wide_resnet50_2``).

Output: a pickle ``{"model": {name: ndarray}, "__author__": str, "matching_heuristics": True,
"suite_meta": {...}}``. Before anything is written: every Detectron2 backbone tensor (stem,
res2-res5) is filled exactly once, every ResNet body tensor of the input is used, shapes
agree, and a Detectron2 backbone loaded from the result reproduces the torchvision ResNet's
res2..res5 features (eval mode, max relative difference <= 1e-4).

CLI: ``python -m transfer.convert care_r50.pth care_r50.pkl``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_pickle

logger = logging.getLogger(__name__)

SUITE_FORMAT = "care-suite/pretrain"
AUTHOR = "care-transfer-suite"
TOLERANCE = 1e-4  # max |d2 - torchvision| / max |torchvision|, per stage

# blocks per stage -> depth; bottleneck (50+) vs basic (18/34) blocks are told by the keys
BOTTLENECK_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
BASIC_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}
# Known (prefix, label) pairs, most preferred first, for checkpoints holding several ResNets.
KNOWN_PREFIXES = [
    ("module.student_encoder.", "CARE official release (student encoder)"),
    ("student_encoder.", "CARE (student encoder)"),
    ("module.encoder_q.", "MoCo (query encoder)"),
    ("encoder_q.", "MoCo (query encoder)"),
    ("module.online_encoder.", "online encoder"),
    ("online_encoder.", "online encoder"),
    ("module.backbone.", "backbone"),
    ("backbone.", "backbone"),
    ("module.", "DataParallel / DDP wrapper"),
    ("", "torchvision ResNet"),
]

_BODY = re.compile(
    r"^(conv1\.weight|bn1\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|layer[1-4]\.\d+\.(conv[1-3]\.weight|bn[1-3]\.(weight|bias|running_mean|running_var"
    r"|num_batches_tracked)|downsample\.[01]\.(weight|bias|running_mean|running_var"
    r"|num_batches_tracked)))$"
)


class ConversionError(ValueError):
    """The input cannot be converted; the message names the keys and the fix."""


@dataclass
class ResNetSpec:
    depth: int
    width_per_group: int  # 64, or 128 for ResNet-50 x2 (wide_resnet50_2)

    @property
    def name(self) -> str:
        return f"ResNet-{self.depth}" + (" x2" if self.width_per_group == 128 else "")

    @property
    def torchvision_name(self) -> str:
        return "wide_resnet50_2" if self.width_per_group == 128 else f"resnet{self.depth}"


@dataclass
class Conversion:
    """Result of converting one checkpoint (the pickle content is ``payload()``)."""

    model: dict[str, np.ndarray]
    spec: ResNetSpec
    source_format: str
    prefix: str
    mapping: list[tuple[str, str]]  # (input key, detectron2 key)
    dropped: list[str]
    meta: dict = field(default_factory=dict)
    max_rel_diff: float | None = None

    def payload(self) -> dict:
        return {"model": self.model, "__author__": AUTHOR, "matching_heuristics": True,
                "suite_meta": {**self.meta, "arch": self.spec.name,
                               "source_format": self.source_format,
                               "max_rel_diff": self.max_rel_diff}}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_any(path: str | Path, allow_pickle: bool = False) -> dict:
    """Read a ``.pkl`` (Detectron2 / pickled dict) or a torch checkpoint as a dict.

    torch files are read with ``weights_only=True``; files holding arbitrary Python objects
    are refused unless ``allow_pickle`` (they can execute code when loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".pkl":
        with open(path, "rb") as f:
            try:
                obj = pickle.load(f, encoding="latin1")
            except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
                raise ConversionError(f"{path}: not a readable pickle ({e})") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if not allow_pickle:
                raise ConversionError(
                    f"{path} holds Python objects that weights_only loading refuses ({e}). "
                    "If you trust the file, pass --allow-pickle."
                ) from e
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except RuntimeError as e:
            raise ConversionError(f"{path}: not a readable torch checkpoint ({e})") from e
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a dict-like checkpoint, got {type(obj)}")
    return dict(obj)


def is_detectron2_pickle(obj: Mapping) -> bool:
    return ("model" in obj and isinstance(obj["model"], Mapping)
            and all(isinstance(v, np.ndarray) for v in obj["model"].values()))


def _tensor_dict(obj: Mapping) -> tuple[dict[str, torch.Tensor], str, dict]:
    """Find the state dict inside a checkpoint: (tensors, where it was, metadata)."""
    if obj.get("format") == SUITE_FORMAT:
        return dict(obj["backbone"]), "care-suite pretraining checkpoint", dict(obj.get("meta", {}))
    for key in ("state_dict", "model", "teacher", "student"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(torch.is_tensor(v) for v in inner.values()):
            return dict(inner), f"'{key}' of a checkpoint", {}
    if any(torch.is_tensor(v) for v in obj.values()):
        return dict(obj), "state dict", {}
    raise ConversionError(
        f"no tensors found; top-level keys: {sorted(obj)[:20]}. Expected a ResNet state dict, "
        "possibly under 'state_dict' or 'model', or a care-suite pretraining checkpoint."
    )


def find_prefix(keys: list[str], prefix: str | None = None) -> tuple[str, str]:
    """The prefix in front of a torchvision ResNet body: (prefix, label)."""
    if prefix is not None:
        if f"{prefix}layer1.0.conv1.weight" not in keys:
            raise ConversionError(f"no ResNet body under --prefix {prefix!r}")
        return prefix, "user-chosen prefix"
    found = sorted({k[: -len("layer1.0.conv1.weight")] for k in keys
                    if k.endswith("layer1.0.conv1.weight")})
    if not found:
        sample = ", ".join(sorted(keys)[:12])
        raise ConversionError(
            "not a ResNet checkpoint: no key ends with 'layer1.0.conv1.weight' (torchvision "
            f"ResNet naming). First keys: {sample}"
        )
    if len(found) == 1:
        label = dict(KNOWN_PREFIXES).get(found[0], "ResNet body")
        return found[0], label
    for known, label in KNOWN_PREFIXES:
        if known in found:
            return known, label
    raise ConversionError(f"several ResNet bodies under prefixes {found}: choose with --prefix")


def infer_spec(body: Mapping[str, torch.Tensor]) -> ResNetSpec:
    """Depth and width from the body's keys and shapes."""
    blocks = tuple(
        len({k.split(".")[1] for k in body if k.startswith(f"layer{i}.")}) for i in range(1, 5)
    )
    bottleneck = "layer1.0.conv3.weight" in body
    known = BOTTLENECK_DEPTHS if bottleneck else BASIC_DEPTHS
    # A truncated body matches the smallest layout that contains it; the completeness check
    # in convert_state then names the missing tensors.
    fits = [(sum(k) - sum(blocks), d) for k, d in known.items()
            if all(a <= b for a, b in zip(blocks, k))]
    if not fits:
        kind = "bottleneck" if bottleneck else "basic"
        raise ConversionError(f"unsupported ResNet layout: {kind} blocks per stage {blocks}")
    depth = min(fits)[1]
    width = int(body["layer1.0.conv1.weight"].shape[0])
    if not bottleneck:
        return ResNetSpec(depth, 64)
    if width not in (64, 128) or (width == 128 and depth != 50):
        raise ConversionError(f"unsupported bottleneck width {width} for depth {depth}")
    return ResNetSpec(depth, width)


def torchvision_to_d2_name(key: str) -> str:
    """``layer2.0.bn1.weight`` -> ``res3.0.conv1.norm.weight`` (DESIGN.md s. 3)."""
    if not key.startswith("layer"):
        return "stem." + key.replace("bn1.", "conv1.norm.")
    stage, rest = key.split(".", 1)
    name = f"res{int(stage[5:]) + 1}.{rest}"
    name = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", name)
    name = name.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    return name


def d2_to_torchvision_name(key: str) -> str:
    """The inverse of ``torchvision_to_d2_name``: ``res3.0.conv1.norm.weight`` ->
    ``layer2.0.bn1.weight``."""
    if key.startswith("stem."):
        return key[len("stem."):].replace("conv1.norm.", "bn1.")
    stage, rest = key.split(".", 1)
    name = f"layer{int(stage[3:]) - 1}.{rest}"
    name = re.sub(r"\.conv(\d)\.norm\.", r".bn\1.", name)
    return name.replace(".shortcut.norm.", ".downsample.1.").replace(".shortcut.",
                                                                      ".downsample.0.")


def build_d2_backbone(spec: ResNetSpec, norm: str = "BN"):
    """Detectron2's ResNet with the protocol's settings (STRIDE_IN_1X1 False), res2..res5."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = spec.depth
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = spec.width_per_group
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if spec.depth in (18, 34) else 256
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def build_torchvision_resnet(spec: ResNetSpec) -> torch.nn.Module:
    import torchvision

    return getattr(torchvision.models, spec.torchvision_name)(weights=None)


@torch.no_grad()
def compare_features(body: Mapping[str, torch.Tensor], model: Mapping[str, np.ndarray],
                     spec: ResNetSpec, size: int = 96) -> float:
    """Max relative difference of res2..res5 between torchvision and Detectron2 (eval)."""
    tv = build_torchvision_resnet(spec).eval()
    missing, unexpected = tv.load_state_dict(dict(body), strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ConversionError(f"torchvision {spec.torchvision_name} refused the body: "
                              f"missing {missing[:10]}, unexpected {unexpected[:10]}")
    d2 = build_d2_backbone(spec).eval()
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


@dataclass
class Body:
    """The torchvision-named ResNet body found in a checkpoint."""

    tensors: dict[str, torch.Tensor]  # torchvision names, prefix removed
    spec: ResNetSpec
    prefix: str
    label: str  # what the prefix says about the source (e.g. "MoCo (query encoder)")
    where: str  # where the state dict sat in the checkpoint
    dropped: list[str]  # input keys that are not body tensors
    meta: dict


def extract_body(obj: Mapping, prefix: str | None = None) -> Body:
    """The ResNet body of any accepted (non-Detectron2) checkpoint dict."""
    tensors, where, meta = _tensor_dict(obj)
    pre, label = find_prefix(list(tensors), prefix)

    def is_body(k: str) -> bool:
        return k.startswith(pre) and bool(_BODY.match(k[len(pre):]))

    body = {k[len(pre):]: v for k, v in tensors.items() if is_body(k)}
    dropped = sorted(k for k in tensors if not is_body(k))
    return Body(body, infer_spec(body), pre, label, where, dropped, meta)


def convert_state(obj: Mapping, prefix: str | None = None, verify: bool = True) -> Conversion:
    """Convert a loaded checkpoint dict (see module docstring); raises ConversionError."""
    b = extract_body(obj, prefix)
    body, spec, pre, label, where, dropped, meta = (b.tensors, b.spec, b.prefix, b.label,
                                                    b.where, b.dropped, b.meta)

    model, mapping, seen = {}, [], {}
    for k in sorted(body):
        name = torchvision_to_d2_name(k)
        if name in seen:
            raise ConversionError(f"{pre}{k} and {pre}{seen[name]} both map to {name}")
        seen[name] = k
        model[name] = body[k].detach().float().cpu().numpy() \
            if body[k].is_floating_point() else body[k].cpu().numpy()
        mapping.append((pre + k, name))

    expected = {k: tuple(v.shape) for k, v in build_d2_backbone(spec).state_dict().items()}
    # num_batches_tracked is optional in inputs (counts steps only)
    missing = sorted(k for k in expected if k not in model and
                     not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in model if k not in expected)
    if missing or unexpected:
        raise ConversionError(
            f"{spec.name} body under prefix {pre!r} is incomplete or unusual: "
            f"missing {len(missing)} Detectron2 tensors {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}; unexpected {unexpected[:8]}. "
            "Is the checkpoint truncated, or of another architecture?"
        )
    bad = [f"{k}: {model[k].shape} vs {expected[k]}" for k in model if
           tuple(model[k].shape) != expected[k]]
    if bad:
        raise ConversionError(f"shape mismatch for {spec.name}: {bad[:8]}")
    for k in expected:  # fill optional counters so the state dict is complete
        if k.endswith("num_batches_tracked") and k not in model:
            model[k] = np.zeros((), dtype=np.int64)

    conv = Conversion(model, spec, f"{label} ({where})", pre, mapping, dropped, meta)
    if verify:
        conv.max_rel_diff = compare_features(body, model, spec)
        if not conv.max_rel_diff <= TOLERANCE:
            raise ConversionError(
                f"numerical check failed: Detectron2 features differ from torchvision's by "
                f"{conv.max_rel_diff:.3g} (relative) > {TOLERANCE}")
    return conv


def convert_file(src: str | Path, dst: str | Path, prefix: str | None = None,
                 allow_pickle: bool = False, verify: bool = True) -> dict:
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
        report = {"source_format": "Detectron2 pickle (passed through)", "arch": None,
                  "max_rel_diff": None, "tensors": len(obj["model"]), "dropped": [],
                  "meta": dict(obj.get("suite_meta", {}))}
    else:
        conv = convert_state(obj, prefix=prefix, verify=verify)
        conv.meta.update(source=str(src), source_sha256=sha)
        payload = conv.payload()
        report = {"source_format": conv.source_format, "arch": conv.spec.name,
                  "max_rel_diff": conv.max_rel_diff, "tensors": len(conv.model),
                  "dropped": conv.dropped, "meta": payload["suite_meta"]}
        for k, name in conv.mapping:
            logger.debug("%s -> %s", k, name)
    atomic_pickle(dst, payload)
    report.update(source=str(src), source_sha256=sha, output=str(dst))
    return report


def summarise(report: dict) -> str:
    dropped = report["dropped"]
    groups = sorted({k.split(".")[0] if not k.startswith("module.") else ".".join(
        k.split(".")[:2]) for k in dropped})
    lines = [f"read     {report['source']} ({report['source_format']})",
             f"arch     {report['arch']}", f"tensors  {report['tensors']} -> {report['output']}"]
    if report["max_rel_diff"] is not None:
        lines.append(f"check    res2..res5 match torchvision: max relative diff "
                     f"{report['max_rel_diff']:.2e} (<= {TOLERANCE})")
    lines.append(f"dropped  {len(dropped)} tensors not in the ResNet body"
                 + (f": {', '.join(groups)}" if groups else ""))
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Convert a pretraining checkpoint (care-suite, "
                                "torchvision, MoCo, CARE release, Detectron2 .pkl) to "
                                "Detectron2's format, with a numerical check.")
    p.add_argument("src", type=Path, help="input checkpoint (.pth/.pt/.tar/.pkl)")
    p.add_argument("dst", type=Path, help="output Detectron2 pickle (.pkl)")
    p.add_argument("--prefix", default=None,
                   help="key prefix of the ResNet body when several are present "
                        "(e.g. 'module.encoder_q.'); default: detected")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow torch files holding arbitrary Python objects (trusted files)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the numerical torchvision-vs-Detectron2 check (not advised)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every key's mapping")
    return p


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    try:
        report = convert_file(args.src, args.dst, prefix=args.prefix,
                              allow_pickle=args.allow_pickle, verify=not args.no_verify)
    except (ConversionError, FileNotFoundError) as e:
        raise SystemExit(f"convert: {e}\nnothing was written.") from None
    print(summarise(report))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
