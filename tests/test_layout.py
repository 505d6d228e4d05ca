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
PACKAGES = ("common", "pretrain", "transfer", "tables", "synthetic", "bench")
# package -> the suite's packages it may import (tools/, benchmarks/ and tests/ may import all)
ALLOWED = {
    "common": set(),
    "synthetic": {"common"},
    "pretrain": {"common", "synthetic"},
    "transfer": {"common", "synthetic"},
    "tables": {"common"},
    "bench": {"common", "transfer", "tables"},  # above the families: nothing imports it
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


FAMILIES = ("detection", "classification", "recognition", "segmentation")


def imported_modules(path: Path) -> dict[str, int]:
    """Every ``transfer.*`` module a file imports (dotted) -> the first line that does."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "transfer":  # from transfer import detection
                names = [f"transfer.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("transfer."):
                found.setdefault(name, node.lineno)
    return found


def family_of(path: Path, root: Path) -> str | None:
    """The transfer family a file belongs to; None for the shared core. The user-facing
    scripts ``transfer/run_*.py`` are entry points: they may import their family."""
    rel = path.relative_to(root / "transfer").parts
    if len(rel) == 1:
        return "scripts" if rel[0].startswith("run_") else None
    return rel[0]


def cross_family_imports(root: Path = REPO) -> list[str]:
    """Within transfer/: a family imports the core, never another family; the core imports
    no family."""
    bad = []
    for path in sorted((root / "transfer").rglob("*.py")):
        mine = family_of(path, root)
        for module, line in imported_modules(path).items():
            target = module.split(".")[1]
            if target not in FAMILIES or mine in ("scripts", target):
                continue
            who = "the core" if mine is None else f"family {mine}"
            bad.append(f"{path.relative_to(root)}:{line} ({who}) imports {module}")
    return sorted(set(bad))


def test_dependencies_run_one_way():
    assert forbidden_imports() == []


def test_transfer_families_import_only_the_core():
    assert cross_family_imports() == []
    present = {p.name for p in (REPO / "transfer").iterdir() if (p / "__init__.py").exists()}
    assert {"detection", "classification"} <= present <= set(FAMILIES)


def test_the_family_check_catches_cross_imports(tmp_path):
    """A family importing another family, and the core importing a family, are reported."""
    for d in ("transfer/detection", "transfer/classification"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "transfer" / "runner.py").write_text("import transfer.spec\n")
    (tmp_path / "transfer" / "launch.py").write_text(
        "def f():\n    from transfer.detection.trainer import train_seed\n"
    )
    (tmp_path / "transfer" / "run_voc.py").write_text("from transfer.detection import runner\n")
    (tmp_path / "transfer" / "classification" / "train.py").write_text(
        "from transfer import detection\nfrom transfer.runner import add_seeds\n"
    )
    assert cross_family_imports(tmp_path) == [
        "transfer/classification/train.py:1 (family classification) imports transfer.detection",
        "transfer/launch.py:2 (the core) imports transfer.detection.trainer",
    ]


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
        "bench/__main__.py",
        "pretrain/__main__.py",
        "pretrain/learning_signal.py",
        "pretrain/tsne.py",
        "pretrain/visualize.py",
        "synthetic/__main__.py",
        "tables/__main__.py",
        "tables/segfigure.py",
        "transfer/convert.py",
        "transfer/launch.py",
        "transfer/run_coco.py",
        "transfer/run_linear.py",
        "transfer/run_recognition.py",
        "transfer/run_segmentation.py",
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
    assert {
        "care-pretrain",
        "care-convert",
        "care-run-voc",
        "care-run-coco",
        "care-tables",
        "care-run-recognition",
        "care-run-segmentation",
        "care-bench",
    } <= set(scripts)
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


# --- carry-on rules: no import circle, short functions, a short README ---------------------

CODE_DIRS = (*PACKAGES, "tools", "benchmarks")
MAX_FUNCTION_LINES = 60
MAX_README_LINES = 160


def module_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Each suite module -> the suite modules it imports anywhere (function-level too)."""
    files = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                cands = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                cands = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            deps |= {c for c in cands if c in files and c != name}
        graph[name] = deps
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on.discard(group[-1])
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_circles():
    assert import_circles(module_graph()) == []


def test_the_circle_check_catches_a_circle(tmp_path):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    (tmp_path / "transfer" / "launch.py").write_text(
        "def f():\n    from transfer.runner import seed_lock_path\n"
    )
    (tmp_path / "transfer" / "runner.py").write_text("import transfer.launch\n")
    (tmp_path / "transfer" / "spec.py").write_text("import transfer.runner\n")
    assert import_circles(module_graph(tmp_path)) == [["transfer.launch", "transfer.runner"]]


def long_functions(root: Path = REPO, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions over ``limit`` lines, argument parsers (``*parser*``, ``add_*args``) aside."""
    found = []
    for folder in CODE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                parser = "parser" in node.name or (
                    node.name.startswith("add_") and node.name.endswith("args")
                )
                lines = node.end_lineno - node.lineno + 1
                if lines > limit and not parser:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines})")
    return found


def test_no_function_is_over_60_lines():
    assert long_functions() == []
    assert long_functions(limit=10)  # the check itself finds long functions


def test_the_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"
