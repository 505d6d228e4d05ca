"""The suite's tables and report.html, rebuilt from every finished seed under the output
(``python -m tables``), with the checkpoints' comparison view; and the record of which
suites ran on an output (``<output>/bench/runs.json``), which ``status`` reads."""

from __future__ import annotations

import json
from pathlib import Path

from common.atomic import atomic_write_json
from common.cli import UserError
from common.locks import waiting_lock

RUNS_FILE = Path("bench") / "runs.json"


def finished_seeds(output: Path) -> int:
    return sum(1 for _ in Path(output).rglob("metrics.json"))


def rebuild(output: Path, stems: list[str]) -> Path | None:
    """Write ``<output>/tables`` (CSV / Markdown / LaTeX, plots, report.html); the report
    compares ``stems`` (each against the first) when there are two or more. None when no
    seed has finished yet, or when the results cannot be tabled (the reason is printed)."""
    from tables import __main__ as tables_cli

    if finished_seeds(output) == 0:
        return None
    argv = ["--runs", str(output), "--out", str(Path(output) / "tables"), "--html", "--quiet"]
    unique = list(dict.fromkeys(stems))
    if len(unique) >= 2:
        argv += ["--compare", *unique]
    try:  # quiet, not a redirected stdout: a runner may print in another thread meanwhile
        written = tables_cli.main(tables_cli.get_args_parser().parse_args(argv))
    except UserError as e:
        print(f"report not rebuilt: {e}")
        return None
    return written.get("report.html")


def record_run(output: Path, suite: str, weights: list[str], dataset: str) -> None:
    """Add (suite, weights, dataset) to the output's runs.json (status reads it)."""
    path = Path(output) / RUNS_FILE
    with waiting_lock(path.with_suffix(".lock")):
        runs = read_runs(output)
        for r in runs:
            if (r["suite"], r["dataset"]) == (suite, dataset):
                r["weights"] += [w for w in weights if w not in r["weights"]]
                break
        else:
            runs.append({"suite": suite, "weights": list(weights), "dataset": dataset})
        atomic_write_json(path, {"runs": runs})


def read_runs(output: Path) -> list[dict]:
    path = Path(output) / RUNS_FILE
    if not path.exists():
        return []
    return json.loads(path.read_text())["runs"]
