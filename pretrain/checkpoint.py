"""Pretraining checkpoints: the exported format, the resumable state, RNG state.

The exported format (read by ``common.checkpoints``, hence by the converter and every
protocol): ``{"format": "care-suite/pretrain", "backbone": torchvision-named online
backbone, "meta": {method, arch, epochs, images_seen, hparams, options, knn}}``. The resumable
``<output>/checkpoint.pth`` is the same dict plus ``"state"`` (model, optimiser, scaler,
counters, RNG, history, config).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from common.atomic import atomic_torch_save
from common.checkpoints import SUITE_FORMAT, CheckpointError, load_any
from common.cli import ConfigError
from pretrain.config import RESUME_FREE_KEYS, PretrainConfig, jsonable
from pretrain.knn import has_knn, knn_summary


def rng_state() -> dict:
    """torch, Python and (when present) CUDA generator states."""
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def exported(
    backbone_state: dict,
    method: str,
    config: dict,
    epoch: int,
    images_seen: int,
    history: list[dict],
) -> dict:
    """The documented format: online backbone (torchvision names) + metadata."""
    knn = [h for h in history if h.get("type") == "epoch" and has_knn(h)]
    return {
        "format": SUITE_FORMAT,
        "backbone": backbone_state,
        "meta": {
            "method": method.upper(),
            "method_key": method,
            "arch": config["arch"],
            "epochs": epoch,
            "images_seen": images_seen,
            "hparams": config,
            "options": config.get("options", {}),  # the method's options (CARE's ablations)
            "knn": knn[-1] if knn else None,
            "knn_summary": knn_summary(history) or None,  # last / best epoch per k
        },
    }


def save(path: Path, ckpt: dict) -> None:
    atomic_torch_save(path, ckpt)


def load_state(path: str | Path, config: dict) -> dict:
    """The resumable state of ``path``, refused when its run's settings differ from
    ``config`` (except ``RESUME_FREE_KEYS``)."""
    ckpt = load_any(path)
    if ckpt.get("format") != SUITE_FORMAT or "state" not in ckpt:
        raise CheckpointError(
            f"{path} is not a resumable pretraining checkpoint of this "
            "suite (no training state): pass another --resume or --output"
        )
    state = ckpt["state"]
    old = recorded_settings(state["config"], config.get("method"))
    for key in sorted(set(config) | set(old)):
        if key not in RESUME_FREE_KEYS and config.get(key) != old.get(key):
            raise ConfigError(
                f"cannot resume {path}: it was run with {key}={old.get(key)!r}, "
                f"this run has {key}={config.get(key)!r}. Use the same flags, or another "
                "--output for a new run."
            )
    return state


def recorded_settings(recorded: dict, method: str | None) -> dict:
    """A checkpoint's recorded config, completed with today's defaults for the settings (and
    method options) added since it was written: a new setting's default is the behaviour the
    run had, so an older run still resumes."""
    from pretrain.methods import method_options

    defaults = jsonable(PretrainConfig(method=method or recorded.get("method", "care")).to_json())
    out = {**defaults, **recorded}
    if isinstance(recorded.get("options"), dict) and isinstance(defaults.get("options"), dict):
        option_defaults = jsonable(method_options(method or recorded["method"]).__dict__)
        out["options"] = {**option_defaults, **recorded["options"]}
    return out
