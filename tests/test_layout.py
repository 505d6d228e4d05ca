"""The package layout: dependencies run one way, every script path works, console scripts
resolve, and no module writes its own copy of a shared helper."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "pretrain", "transfer", "tables", "synthetic")
# package -> the suite's packages it may import (tools/, benchmarks/ and tests/ may import all)
ALLOWED = {
    "common": set(),
    "synthetic": {"common"},
    "pretrain": {"common", "synthetic"},
    "transfer": {"common", "synthetic"},
    "tables": {"common"},
}
SUITE = set(PACKAGES) | {"benchmarks", "tools", "tests"}


def imported_packages(path: Path) -> dict[str, int]:
    """The suite's top-level packages a file imports -> the first line that does."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in SUITE:
                found.setdefault(top, node.lineno)
    return found


def forbidden_imports(root: Path = REPO) -> list[str]:
    bad = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            for top, line in imported_packages(path).items():
                if top != pkg and top not in ALLOWED[pkg]:
                    bad.append(f"{path.relative_to(root)}:{line} imports {top}")
    return bad


def test_dependencies_run_one_way():
    assert forbidden_imports() == []


def test_the_import_check_catches_a_forbidden_import(tmp_path):
    """The check itself can fail: a pretrain module importing transfer is reported."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    (tmp_path / "pretrain" / "bad.py").write_text("import os\nfrom transfer.convert import x\n")
    (tmp_path / "common" / "worse.py").write_text("def f():\n    import pretrain.trainer\n")
    assert forbidden_imports(tmp_path) == [
        "common/worse.py:2 imports pretrain",
        "pretrain/bad.py:2 imports transfer",
    ]


def _runnable_modules() -> list[str]:
    return sorted(
        str(p.relative_to(REPO))
        for pkg in PACKAGES
        for p in (REPO / pkg).rglob("*.py")
        if '__name__ == "__main__"' in p.read_text()
    )


def test_runnable_modules_are_the_expected_ones():
    assert _runnable_modules() == [
        "pretrain/__main__.py",
        "pretrain/learning_signal.py",
        "pretrain/visualize.py",
        "synthetic/__main__.py",
        "tables/__main__.py",
        "transfer/convert.py",
        "transfer/launch.py",
        "transfer/run_coco.py",
        "transfer/run_linear.py",
        "transfer/run_voc.py",
    ]


@pytest.mark.parametrize("script", _runnable_modules())
def test_every_script_path_runs(script):
    """``python <package>/<module>.py --help`` works from the repository root, like -m."""
    res = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage:" in res.stdout


def test_console_scripts_resolve():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"care-pretrain", "care-convert", "care-run-voc", "care-run-coco", "care-tables"} <= set(
        scripts
    )
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_one_copy_of_the_shared_helpers():
    """Exit codes, the checkpoint format name and signal handling live in common/ only."""
    hits = []
    for pkg in PACKAGES[1:]:
        for path in (REPO / pkg).rglob("*.py"):
            text = path.read_text()
            for needle in (
                "= 130",
                "SUITE_FORMAT =",
                "class StopFlag",
                "def atomic_write",
                "tempfile.mkstemp(",
            ):
                if needle in text:
                    hits.append(f"{path.relative_to(REPO)}: {needle}")
    assert hits == []
