"""Environment record written beside every run: versions, devices, detectron2's build.

``detectron2_info()`` tells apart a user's own detectron2 build and the suite's PyPI rebuild
(tools/install_detectron2.py leaves a ``_suite_build.json`` marker in the package), and
whether compiled ops exist. Without them COCO evaluation must use pycocotools
(``use_fast_impl=False``) and rotated boxes / deformable conv are unavailable.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import platform
import sys
from functools import lru_cache
from pathlib import Path

MISSING_DETECTRON2 = (
    "detectron2 is not importable. Run `make install` from the repository root: it keeps an "
    "existing build or builds a pure-Python detectron2 from PyPI's pb1-detectron2 0.6."
)


@lru_cache(maxsize=1)
def detectron2_info() -> dict:
    """{"version", "path", "source": "own build" | "PyPI rebuild", "compiled_ops": bool}."""
    try:
        import detectron2
    except ImportError as e:
        raise ImportError(MISSING_DETECTRON2) from e
    pkg = Path(detectron2.__file__).parent
    marker_path = pkg / "_suite_build.json"
    marker = json.loads(marker_path.read_text()) if marker_path.exists() else None
    try:
        c_ext = importlib.import_module("detectron2._C")
        compiled = not getattr(c_ext, "IS_STAND_IN", False)
    except ImportError:
        compiled = False
    info = {
        "version": detectron2.__version__,
        "path": str(pkg),
        "source": "PyPI rebuild" if marker else "own build",
        "compiled_ops": compiled,
    }
    if marker:
        info["sdist"] = marker.get("sdist")
        info["patch_level"] = marker.get("patch_level")
    return info


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_record() -> dict:
    """Everything needed to tell two runs' environments apart (JSON-serialisable)."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for k in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(k)
            gpus.append(
                {
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}",
                }
            )
    try:
        d2 = detectron2_info()
    except ImportError:
        d2 = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": gpus,
        "cpu_threads": torch.get_num_threads(),
        "detectron2": d2,
        "packages": {
            m: _version(m)
            for m in (
                "torchvision",
                "numpy",
                "Pillow",
                "pycocotools",
                "faster-coco-eval",
                "fvcore",
                "submitit",
            )
        },
    }


def describe_detectron2() -> str:
    """One line for logs, e.g. 'detectron2 0.6 (PyPI rebuild, no compiled ops)'."""
    info = detectron2_info()
    ops = "compiled ops" if info["compiled_ops"] else "no compiled ops"
    return f"detectron2 {info['version']} ({info['source']}, {ops})"
