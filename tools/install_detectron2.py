#!/usr/bin/env python
"""Install a working Detectron2 for this suite (called by ``make install``).

FAIR publishes no detectron2 on PyPI. If ``import detectron2`` already works (a user's own
build, usually with compiled CUDA ops), it is kept untouched. Otherwise this script

1. downloads the PyPI sdist ``pb1-detectron2==0.6`` (upstream v0.6 Python files, no C++
   sources) with pip and verifies its sha256;
2. fixes, in a copy, the incompatibilities with today's stack (docs/detectron2.md):
   a stand-in ``detectron2._C`` whose functions raise a clear error when called,
   ``np.bool``/``np.int``/``np.float``/``np.str`` aliases (numpy >= 1.24),
   ``Image.LINEAR`` (Pillow >= 10), ``pkg_resources`` (setuptools >= 81), the COCO
   evaluator's compiled fast path; and, as later detectron2 releases did, ``hooks.LRScheduler``
   checkpointing any torch >= 2 scheduler, ``detectron2.export`` (hence
   ``detectron2.utils.analysis``) importable without caffe2, and the ``detectron2.projects``
   packages (PointRend, DeepLab, Panoptic-DeepLab) installed as upstream's setup.py does;
3. builds a pure-Python wheel ``detectron2-0.6+pb1.purepy`` into ``--cache``
   (``.cache/wheels`` by default, where a GPU machine without a package index can take it) and
   installs it with pip, together with its runtime dependencies.

A marker ``detectron2/_suite_build.json`` inside the installed package records the source,
the sdist hash and the patches; ``transfer.environment`` reads it for every run's record.

Only the standard library is used, so this runs before the suite itself is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
WHEEL_VERSION = "0.6+pb1.purepy"
OPENCV = "opencv-python-headless<5"  # when no cv2 imports (install_opencv)
# Bump when the patches below change, so an older rebuild is replaced by `make install`.
PATCH_LEVEL = 4

RUNTIME_REQUIREMENTS = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]

STAND_IN_C = '''"""Stand-in for detectron2's compiled extension ``detectron2._C``.

This detectron2 is a pure-Python rebuild of the PyPI sdist pb1-detectron2 0.6, which ships no
C++/CUDA sources. The standard Faster/Mask R-CNN detectors use torchvision's RoIAlign and NMS
and never call these ops; rotated boxes, deformable convolution and the fast COCO evaluator do.
Importing works; calling any op raises a RuntimeError that names it.
"""

IS_STAND_IN = True


class MissingCompiledOp(RuntimeError):
    """Raised when a compiled detectron2 op is called in a build that has none."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def _missing(*args, **kwargs):
        raise MissingCompiledOp(
            f"detectron2._C.{name} is a compiled op, and this detectron2 (pure-Python rebuild "
            "of pb1-detectron2 0.6) has no compiled ops. The suite's protocols do not need it. "
            "To use it, build detectron2 from source with its C++/CUDA ops "
            "(pip install 'git+https://github.com/facebookresearch/detectron2.git') and re-run "
            "`make install`, which keeps an importable detectron2."
        )

    _missing.__name__ = name
    return _missing
'''

# (path inside the package, exact old text, new text): each must match at least once.
TEXT_PATCHES: list[tuple[str, str, str]] = [
    (
        "detectron2/data/transforms/transform.py",
        "interp=Image.LINEAR",
        "interp=Image.BILINEAR",
    ),
    (
        "detectron2/model_zoo/model_zoo.py",
        "import pkg_resources\n",
        "import importlib.resources\n",
    ),
    (
        "detectron2/model_zoo/model_zoo.py",
        "cfg_file = pkg_resources.resource_filename(\n"
        '        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )',
        "cfg_file = str(\n"
        '        importlib.resources.files("detectron2.model_zoo").joinpath("configs", config_path)'
        "\n    )",
    ),
    (
        "detectron2/evaluation/coco_evaluation.py",
        "        self._use_fast_impl = use_fast_impl\n",
        "        from detectron2 import _C as _d2_C\n\n"
        "        # The fast path is compiled C++; without it use pycocotools' official COCOeval.\n"
        "        self._use_fast_impl = use_fast_impl and not getattr(\n"
        "            _d2_C, 'IS_STAND_IN', False)\n",
    ),
    (
        "detectron2/utils/collect_env.py",
        "        import detectron2._C as _C\n",
        "        import detectron2._C as _C\n\n"
        "        if getattr(_C, 'IS_STAND_IN', False):\n"
        "            raise ImportError('no compiled ops (pure-Python rebuild)')\n",
    ),
    (
        "detectron2/layers/nms.py",
        "    return torch.ops.detectron2.nms_rotated(boxes, scores, iou_threshold)",
        "    from detectron2 import _C\n\n"
        "    if getattr(_C, 'IS_STAND_IN', False):\n"
        "        return _C.nms_rotated(boxes, scores, iou_threshold)\n"
        "    return torch.ops.detectron2.nms_rotated(boxes, scores, iou_threshold)",
    ),
    (  # torch >= 2 schedulers derive from LRScheduler, no longer from _LRScheduler: their
        # state was left out of checkpoints (a resumed StepLR restarted at step 0)
        "detectron2/engine/hooks.py",
        "isinstance(self.scheduler, torch.optim.lr_scheduler._LRScheduler)",
        "isinstance(self.scheduler, getattr(torch.optim.lr_scheduler, 'LRScheduler', "
        "torch.optim.lr_scheduler._LRScheduler))",
    ),
    (  # caffe2 is gone from torch: only its exporter needs it (TorchScript, tracing do not)
        "detectron2/export/__init__.py",
        "from .api import *\n",
        "try:\n"
        "    from caffe2.proto import caffe2_pb2 as _tmp  # noqa: F401\n"
        "except ImportError:  # caffe2 is optional\n"
        "    pass\n"
        "else:\n"
        "    from .api import *\n",
    ),
    (  # Python 3.11 refuses random.sample of a set: a skipped (unreadable) image crashed
        "detectron2/data/common.py",
        "cur_idx = self._rng.sample(self._fallback_candidates, k=1)[0]",
        "cur_idx = self._rng.sample(sorted(self._fallback_candidates), k=1)[0]",
    ),
]

# numpy >= 1.24 removed these aliases of builtins; `np.bool_`, `np.int64`... are untouched.
NUMPY_ALIAS = re.compile(r"\bnp\.(bool|int|float|str|object)\b(?![_\w])")


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def existing_detectron2() -> dict | None:
    """Probe ``import detectron2`` in a fresh interpreter; None if it fails."""
    code = (
        "import json, pathlib, detectron2\n"
        "p = pathlib.Path(detectron2.__file__).parent\n"
        "m = p / '_suite_build.json'\n"
        "print(json.dumps({'version': detectron2.__version__, 'path': str(p),\n"
        "  'marker': json.loads(m.read_text()) if m.exists() else None}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_sdist(dest: Path) -> Path:
    """Fetch the sdist with pip (honours the user's index settings); verify its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
    if not target.exists():
        log(f"downloading {SDIST_NAME}=={SDIST_VERSION} (sdist) from the package index")
        # Its setup.py imports torch at metadata time: hence no build isolation.
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--no-build-isolation",
            "-d",
            str(dest),
            f"{SDIST_NAME}=={SDIST_VERSION}",
        ]
        subprocess.run(cmd, check=True)
    digest = sha256(target)
    if digest != SDIST_SHA256:
        target.unlink()
        raise SystemExit(
            f"{target.name}: sha256 {digest} differs from the expected {SDIST_SHA256}; "
            "the file was removed. Check your package index / mirror and retry."
        )
    log(f"verified {target.name} sha256={digest[:16]}...")
    return target


def patch_tree(root: Path) -> list[str]:
    """Apply the compatibility fixes under ``root`` (the sdist's top folder)."""
    applied = []
    pkg = root / "detectron2"
    (pkg / "_C.py").write_text(STAND_IN_C)
    applied.append("detectron2/_C.py: stand-in raising MissingCompiledOp on call")
    for rel, old, new in TEXT_PATCHES:
        path = root / rel
        text = path.read_text()
        if old not in text:
            raise SystemExit(f"patch target not found in {rel}: {old[:60]!r} (sdist changed?)")
        path.write_text(text.replace(old, new))
        applied.append(f"{rel}: {old.strip().splitlines()[0][:50]}")
    for path in sorted(pkg.rglob("*.py")):
        text = path.read_text()
        new, n = NUMPY_ALIAS.subn(lambda m: m.group(1), text)
        if n:
            path.write_text(new)
            applied.append(f"{path.relative_to(root)}: {n} removed numpy alias(es)")
    return applied


# upstream setup.py installs these small projects under detectron2.projects
PROJECTS = {
    "detectron2.projects.point_rend": "projects/PointRend/point_rend",
    "detectron2.projects.deeplab": "projects/DeepLab/deeplab",
    "detectron2.projects.panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}


def write_setup(root: Path, marker: dict) -> None:
    """Replace the sdist's setup.py (which builds C++ from absent sources) by a pure one
    that installs the same packages (detectron2 and its ``detectron2.projects``)."""
    (root / "detectron2" / "_suite_build.json").write_text(json.dumps(marker, indent=1))
    setup_py = f'''from setuptools import find_packages, setup

setup(
    name="detectron2",
    version="{WHEEL_VERSION}",
    description="Detectron2 v0.6 Python files (from PyPI pb1-detectron2), rebuilt pure-Python",
    url="https://github.com/facebookresearch/detectron2",
    license="Apache-2.0",
    packages=find_packages(include=["detectron2", "detectron2.*"]) + {list(PROJECTS)!r},
    package_dir={PROJECTS!r},
    package_data={{
        "detectron2": ["_suite_build.json"],
        "detectron2.model_zoo": ["configs/*.yaml", "configs/**/*.yaml", "configs/**/*.py"],
    }},
    python_requires=">=3.8",
    install_requires={RUNTIME_REQUIREMENTS!r},
)
'''
    (root / "setup.py").write_text(setup_py)
    for name in ("setup.cfg", "pyproject.toml"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / "pb1_detectron2.egg-info", ignore_errors=True)


def build_wheel(cache: Path) -> Path:
    """Download, verify, patch and build; return the wheel path (reused when cached)."""
    wheel_dir = cache / "wheels"
    marker = {
        "source": "pypi-rebuild",
        "sdist": f"{SDIST_NAME}=={SDIST_VERSION}",
        "sdist_sha256": SDIST_SHA256,
        "patch_level": PATCH_LEVEL,
        "compiled_ops": False,
    }
    stamp = wheel_dir / f"detectron2-{WHEEL_VERSION}.patch{PATCH_LEVEL}.stamp"
    wheels = sorted(wheel_dir.glob("detectron2-*.whl"))
    if wheels and stamp.exists():
        log(f"reusing cached wheel {wheels[-1]}")
        return wheels[-1]
    sdist = download_sdist(cache / "sdist")
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        root = Path(tmp) / f"{SDIST_NAME}-{SDIST_VERSION}"
        marker["patches"] = patch_tree(root)
        write_setup(root, marker)
        for old in wheel_dir.glob("detectron2-*"):
            old.unlink()
        wheel_dir.mkdir(parents=True, exist_ok=True)
        log("building the pure-Python wheel")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "-w",
                str(wheel_dir),
                str(root),
            ],
            check=True,
        )
    stamp.write_text(json.dumps(marker))
    (wheel,) = wheel_dir.glob("detectron2-*.whl")
    log(f"built {wheel} ({len(marker['patches'])} patches)")
    return wheel


def install_opencv() -> None:
    """detectron2 leaves OpenCV to the user (PointRend, the visualizer, some transforms need
    it): the headless 4.x wheel, unless some ``cv2`` already imports (a second OpenCV
    package beside the user's would overwrite it)."""
    probe = subprocess.run([sys.executable, "-c", "import cv2"], capture_output=True)
    if probe.returncode == 0:
        return
    log(f"installing {OPENCV} (no importable cv2)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", OPENCV], check=True)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(".cache"),
        help="folder for the sdist and the built wheel (default: .cache)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rebuild and reinstall even if an importable detectron2 exists",
    )
    p.add_argument("--build-only", action="store_true", help="build the wheel, do not install")
    return p


def main(args: argparse.Namespace) -> None:
    current = existing_detectron2()
    if current and not args.force and not args.build_only:
        marker = current["marker"]
        if marker is None:
            log(f"keeping your own detectron2 {current['version']} at {current['path']}")
            return
        if marker.get("patch_level") == PATCH_LEVEL:
            log(f"detectron2 {current['version']} (PyPI rebuild) is installed and current")
            install_opencv()
            return
        log("an older rebuild of detectron2 is installed: replacing it")
    try:
        import torch  # noqa: F401  (the sdist's setup.py needs it to produce metadata)
    except ImportError:
        raise SystemExit("install torch and torchvision first (see `make install`)") from None
    wheel = build_wheel(args.cache.resolve())
    if args.build_only:
        return
    log(f"installing {wheel.name} and its dependencies")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--force-reinstall",
            "--no-deps",
            str(wheel),
        ],
        check=True,
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", *RUNTIME_REQUIREMENTS], check=True
    )
    install_opencv()
    info = existing_detectron2()
    if not info:
        raise SystemExit("detectron2 was installed but does not import; see the errors above")
    log(f"detectron2 {info['version']} ready at {info['path']}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
