"""Reading checkpoints: any common format down to a torchvision-named ResNet body.

Accepted (detected from the keys, never from the file name): this suite's pretraining
checkpoints (``format: care-suite/pretrain``, the online backbone under ``backbone``),
plain torchvision ResNet state dicts (optionally under ``state_dict`` / ``model``),
MoCo-style checkpoints (``module.encoder_q.``), the official CARE release
(``module.student_encoder.``), DINO-style ``teacher`` / ``student`` dicts, VISSL's nested
``classy_state_dict.base_model.model.trunk._feature_blocks.`` (any nesting: names are joined
with '.'), any checkpoint with one unambiguous prefix before a ResNet body (or one picked
with ``prefix``), and Detectron2 pickles (``read_backbone``).
The converter (``transfer.convert``), the attention-map tool and the classification
protocols all read weights through here.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.archs import Arch, arch_from_layout
from common.cli import InputNotFound, UserError
from common.filekinds import pickled_type, short, sniff

SUITE_FORMAT = "care-suite/pretrain"  # the pretraining checkpoint's ``format`` value
AUTHOR = "care-transfer-suite"  # ``__author__`` of the Detectron2 pickles we write

# Known (prefix, label) pairs, most preferred first, for checkpoints holding several ResNets.
KNOWN_PREFIXES = [
    ("module.student_encoder.", "CARE official release (student encoder)"),
    ("student_encoder.", "CARE (student encoder)"),
    ("module.encoder_q.", "MoCo (query encoder)"),
    ("encoder_q.", "MoCo (query encoder)"),
    ("module.online_encoder.", "online encoder"),
    ("online_encoder.", "online encoder"),
    ("classy_state_dict.base_model.model.trunk._feature_blocks.", "VISSL trunk"),
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
# the header of torch.save's legacy (non-zip) format: pickle protocol 2, then a magic long
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or used; the message names the keys and the fix."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _looks_like_torch_file(path: Path) -> bool:
    """A complete torch.save zip (with its data.pkl), or the legacy format's header."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith("data.pkl") for n in z.namelist())
        except zipfile.BadZipFile:
            return False
    with open(path, "rb") as f:
        return f.read(len(_LEGACY_TORCH_MAGIC)) == _LEGACY_TORCH_MAGIC


def _not_readable(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable checkpoint (corrupt or truncated? "
        f"{type(e).__name__}: {short(e)}); copy or download it again"
    )


_DICTS = ("dict", "collections.OrderedDict")


def _unloadable(path: Path, e: Exception) -> CheckpointError:
    """Why ``path`` did not load: plainly another kind of file (an image, text, an archive),
    or a corrupt / truncated checkpoint. Asked only after loading failed, so a checkpoint
    that loads is never judged by its first bytes."""
    kind = sniff(path)
    if kind is None:
        return _not_readable(path, e)
    return CheckpointError(
        f"{path} is {kind}, not a checkpoint: pass the pretrained weights (a .pth / .pt / "
        ".tar checkpoint or a Detectron2 .pkl)"
    )


def _not_a_dict(path: Path, kind: str) -> CheckpointError:
    return CheckpointError(
        f"{path} holds a Python object of type {kind}, not a checkpoint dict: save the "
        "weights as a dict, e.g. torch.save(model.state_dict(), path), and pass that file"
    )


def _torch_load(path: Path, allow_pickle: bool):
    """torch.load with weights_only; what it refuses is named (its type, the fix)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        kind = pickled_type(path)
        if kind is not None and kind not in _DICTS:
            raise _not_a_dict(path, kind) from None
        if not _looks_like_torch_file(path):
            raise _unloadable(path, e) from None
        if not allow_pickle:
            raise CheckpointError(
                f"{path} holds Python objects besides tensors, which safe (weights_only) "
                f"loading refuses ({short(e, 80)}); if you trust the file, pass "
                "--allow-pickle"
            ) from None
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any other failure: not a readable checkpoint
        raise _unloadable(path, e) from None


def load_any(path: str | Path, allow_pickle: bool = False) -> dict:
    """Read a ``.pkl`` (Detectron2 / pickled dict) or a torch checkpoint as a dict.

    torch files are read with ``weights_only=True``; a complete file holding arbitrary
    Python objects is refused unless ``allow_pickle`` (loading it can execute code); a
    corrupt or truncated file is reported as such.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"checkpoint not found: {path}")
    if path.suffix == ".pkl":
        with open(path, "rb") as f:
            try:
                obj = pickle.load(f, encoding="latin1")
            except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
                raise _unloadable(path, e) from None
    else:
        obj = _torch_load(path, allow_pickle)
    if not isinstance(obj, Mapping):
        kind = type(obj).__qualname__
        module = type(obj).__module__
        raise _not_a_dict(path, kind if module == "builtins" else f"{module}.{kind}")
    return dict(obj)


def is_detectron2_pickle(obj: Mapping) -> bool:
    return (
        "model" in obj
        and isinstance(obj["model"], Mapping)
        and all(isinstance(v, np.ndarray) for v in obj["model"].values())
    )


def tensor_dict(obj: Mapping) -> tuple[dict[str, torch.Tensor], str, dict]:
    """Find the state dict inside a checkpoint: (tensors, where it was, metadata)."""
    if obj.get("format") == SUITE_FORMAT:
        return dict(obj["backbone"]), "care-suite pretraining checkpoint", dict(obj.get("meta", {}))
    for key in ("state_dict", "model", "teacher", "student"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(torch.is_tensor(v) for v in inner.values()):
            return dict(inner), f"'{key}' of a checkpoint", {}
    if any(torch.is_tensor(v) for v in obj.values()):
        return dict(obj), "state dict", {}
    nested = _flatten(obj)
    if any(k.endswith("layer1.0.conv1.weight") for k in nested):
        return nested, "nested dicts (names joined with '.')", {}
    raise CheckpointError(
        f"no tensors found; top-level keys: {sorted(obj)[:20]}. Expected a ResNet state dict, "
        "possibly under 'state_dict' or 'model', or a care-suite pretraining checkpoint."
    )


def _flatten(obj: Mapping, prefix: str = "", depth: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor below nested mappings, named by its keys joined with '.' (VISSL keeps
    its trunk at ``classy_state_dict -> base_model -> model -> trunk``)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if torch.is_tensor(v):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, Mapping) and depth < 8:
            out.update(_flatten(v, f"{prefix}{k}.", depth + 1))
    return out


def find_prefix(keys: list[str], prefix: str | None = None) -> tuple[str, str]:
    """The prefix in front of a torchvision ResNet body: (prefix, label)."""
    if prefix is not None:
        if f"{prefix}layer1.0.conv1.weight" not in keys:
            raise CheckpointError(f"no ResNet body under --prefix {prefix!r}")
        return prefix, "user-chosen prefix"
    found = sorted(
        {k[: -len("layer1.0.conv1.weight")] for k in keys if k.endswith("layer1.0.conv1.weight")}
    )
    if not found:
        sample = ", ".join(sorted(keys)[:12])
        raise CheckpointError(
            "not a ResNet checkpoint: no key ends with 'layer1.0.conv1.weight' (torchvision "
            f"ResNet naming). First keys: {sample}"
        )
    if len(found) == 1:
        return found[0], dict(KNOWN_PREFIXES).get(found[0], "ResNet body")
    for known, label in KNOWN_PREFIXES:
        if known in found:
            return known, label
    raise CheckpointError(f"several ResNet bodies under prefixes {found}: choose with --prefix")


def infer_arch(body: Mapping[str, torch.Tensor]) -> Arch:
    """The architecture (``common.archs``) of a torchvision-named body, from keys and shapes."""
    blocks = tuple(
        len({k.split(".")[1] for k in body if k.startswith(f"layer{i}.")}) for i in range(1, 5)
    )
    bottleneck = "layer1.0.conv3.weight" in body
    width = int(body["layer1.0.conv1.weight"].shape[0]) if bottleneck else 64
    conv1 = body.get("conv1.weight")
    stem = "cifar" if conv1 is not None and tuple(conv1.shape[-2:]) == (3, 3) else "imagenet"
    arch = arch_from_layout(blocks, bottleneck, width, stem)
    if arch is None:
        kind = f"bottleneck (width {width})" if bottleneck else "basic"
        raise CheckpointError(
            f"unsupported ResNet layout: {kind} blocks per stage {blocks}, {stem} stem"
        )
    return arch


def torchvision_to_d2_name(key: str) -> str:
    """``layer2.0.bn1.weight`` -> ``res3.0.conv1.norm.weight`` (Detectron2's ResNet names)."""
    if not key.startswith("layer"):
        return "stem." + key.replace("bn1.", "conv1.norm.")
    stage, rest = key.split(".", 1)
    name = f"res{int(stage[5:]) + 1}.{rest}"
    name = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", name)
    return name.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")


def d2_to_torchvision_name(key: str) -> str:
    """The inverse of ``torchvision_to_d2_name``."""
    if key.startswith("stem."):
        return key[len("stem.") :].replace("conv1.norm.", "bn1.")
    stage, rest = key.split(".", 1)
    name = f"layer{int(stage[3:]) - 1}.{rest}"
    name = re.sub(r"\.conv(\d)\.norm\.", r".bn\1.", name)
    return name.replace(".shortcut.norm.", ".downsample.1.").replace(".shortcut.", ".downsample.0.")


@dataclass
class Body:
    """The torchvision-named ResNet body found in a checkpoint."""

    tensors: dict[str, torch.Tensor]  # torchvision names, prefix removed
    arch: Arch
    prefix: str
    label: str  # what the prefix says about the source (e.g. "MoCo (query encoder)")
    where: str  # where the state dict sat in the checkpoint
    dropped: list[str]  # input keys that are not body tensors
    meta: dict

    @property
    def stem_relu(self) -> bool | None:
        """Whether a suite checkpoint's backbone was trained with its stem ReLU (its method
        options' ``stem_relu``); None (the arch's default) for other checkpoints."""
        return ((self.meta or {}).get("options") or {}).get("stem_relu")


def extract_body(obj: Mapping, prefix: str | None = None) -> Body:
    """The ResNet body of any accepted checkpoint dict, Detectron2 pickles included."""
    if is_detectron2_pickle(obj):
        stages = ("stem", "res2", "res3", "res4", "res5")
        tensors = {
            d2_to_torchvision_name(k): torch.from_numpy(np.asarray(v))
            for k, v in obj["model"].items()
            if k.split(".")[0] in stages
        }
        dropped = sorted(k for k in obj["model"] if k.split(".")[0] not in stages)
        return Body(
            tensors,
            infer_arch(tensors),
            "",
            "Detectron2 pickle",
            "'model'",
            dropped,
            dict(obj.get("suite_meta", {})),
        )
    tensors, where, meta = tensor_dict(obj)
    pre, label = find_prefix(list(tensors), prefix)

    def is_body(k: str) -> bool:
        return k.startswith(pre) and bool(_BODY.match(k[len(pre) :]))

    body = {k[len(pre) :]: v for k, v in tensors.items() if is_body(k)}
    dropped = sorted(k for k in tensors if not is_body(k))
    return Body(body, infer_arch(body), pre, label, where, dropped, meta)


def read_backbone(path: str | Path, allow_pickle: bool = False, prefix: str | None = None) -> Body:
    """The ResNet body of a checkpoint file of any accepted format."""
    return extract_body(load_any(path, allow_pickle=allow_pickle), prefix)
