"""``python -m tables``: aggregate finished seeds into the papers' tables and plots.

    python -m tables --runs output --out output/tables
    python -m tables --runs output other_cluster/output --compare care_r50 byol_r50
    python -m tables --reference-only            # the paper's tables alone
    python -m tables --runs output --html        # also report.html (tables.report)

Writes, per table that has rows (``tables.layout.TABLES``: table4, table5, c4_2x, table2,
classification, ...): ``<name>.csv`` (all numbers: mean,
std, n, 95% CI, delta, Welch p-value), ``<name>.md`` and ``<name>.tex``; a strip/box plot
``<table>_<protocol>.png`` per protocol run in that table (the paper's means beside our seeds
differ from table to table); ``segmentation_figure.png`` when segmentation seeds kept
predictions (``tables.segfigure``: GSG's Figure 2 layout); ``groups.json`` (every group's
seeds, unfinished and failed seeds); with ``--html``, ``report.html``: all of it on one
self-contained page.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json

from common.cli import doc_parser, run_cli
from tables import segfigure
from tables.aggregate import MIN_SEEDS, TablesError, add_runs_arg, collect
from tables.compare import comparisons
from tables.compare import to_csv as compare_csv
from tables.layout import TABLES, build_table, known_sources, table_for, table_groups
from tables.plot import plot_datasets, plot_protocol
from tables.render import to_csv, to_latex, to_markdown


def get_args_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    add_runs_arg(p, "results roots written by transfer/run_*.py --output")
    p.add_argument(
        "--out", type=Path, default=None, help="where tables go (default: <first root>/tables)"
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="WEIGHTS=METHOD[:EPOCHS]",
        help="row label for a weights name whose checkpoint has no metadata, "
        "e.g. --label tv_r50=Supervised:90",
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="METHOD[:EPOCHS]",
        help="paper row for the delta columns (default: CARE of the same epochs)",
    )
    p.add_argument(
        "--source",
        default=None,
        help="which paper table's rows, e.g. care_supp_table3 (default: main table)",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="WEIGHTS",
        default=None,
        help="two or more weights names: each later one against the first, per column: "
        "Welch's t-test (p-values in the CSV), and comparison.csv / the report's comparison "
        "view with the difference and its 95%% interval",
    )
    p.add_argument("--decimals", type=int, default=1, help="decimals in Markdown / LaTeX")
    p.add_argument(
        "--reference-only",
        action="store_true",
        help="write the paper's tables alone (no runs needed)",
    )
    p.add_argument("--no-paper", action="store_true", help="leave the paper's rows out")
    p.add_argument(
        "--html",
        action="store_true",
        help="also write report.html: every table, plot, seed and environment on one page",
    )
    p.add_argument(
        "--quiet", action="store_true", help="print nothing but errors (the files are the output)"
    )
    p.add_argument(
        "--figure",
        action="append",
        type=Path,
        default=[],
        metavar="PNG",
        help="an extra image for the report's figures section (repeatable), e.g. the "
        "attention maps",
    )
    return p


def _labels(items: list[str]) -> dict[str, tuple[str, str]]:
    out = {}
    for item in items:
        weights, _, rest = item.partition("=")
        method, _, epochs = rest.partition(":")
        if not weights or not method:
            raise TablesError(f"--label {item!r}: expected WEIGHTS=METHOD[:EPOCHS]")
        out[weights] = (method, epochs)
    return out


def write_table(spec, groups, args: argparse.Namespace, out: Path, built: dict | None = None):
    """One table as CSV / Markdown / LaTeX, plus a per-seed plot of each of its protocols;
    ``built[spec.name]`` receives (spec, rows) for the report."""
    rows = build_table(
        spec,
        groups,
        _labels(args.label),
        source=args.source,
        reference=args.reference,
        compare=tuple(args.compare or ()) or None,
        with_paper=not args.no_paper,
    )
    if built is not None:
        built[spec.name] = (spec, rows)
    written: dict[str, Path] = {}
    for ext, text in (
        ("csv", to_csv(spec, rows)),
        ("md", to_markdown(spec, rows, args.decimals)),
        ("tex", to_latex(spec, rows, args.decimals)),
    ):
        path = out / f"{spec.name}.{ext}"
        path.write_text(text)
        written[f"{spec.name}.{ext}"] = path
    if spec.min_seeds == 1 or any(c.dataset for c in spec.columns):  # per-dataset columns
        png = plot_datasets(spec, rows, out / f"{spec.name}.png")
        if png:
            written[png.name] = png
        return written
    mine = table_groups(spec, groups, _labels(args.label))
    for protocol in sorted({g.protocol for g in mine}):
        png = plot_protocol(spec, mine, protocol, out / f"{spec.name}_{protocol}.png", args.source)
        if png:
            written[png.name] = png
    return written


def min_seeds(protocol: str) -> int:
    """The number of seeds the table of ``protocol`` (or its ``_smoke`` variant) asks for
    (1 for a deterministic protocol); MIN_SEEDS where no table knows it."""
    try:
        return table_for(protocol.removesuffix("_smoke")).min_seeds
    except TablesError:
        return MIN_SEEDS


def summarise_groups(groups, out: Path, quiet: bool = False) -> None:
    """``groups.json`` and (unless ``quiet``) one line per group: finished, unfinished and
    failed seeds."""
    wanted = {g.protocol: min_seeds(g.protocol) for g in groups}
    summary = [
        {
            "protocol": g.protocol,
            "weights": g.weights,
            "finished": len(g.seeds),
            "few_seeds": len(g.seeds) < wanted[g.protocol],
            "unfinished": [str(p) for p in g.unfinished],
            "failed": [{"seed": str(p), "error": e} for p, e in g.failed],
        }
        for g in groups
    ]
    (out / "groups.json").write_text(json.dumps(summary, indent=1))
    for g in [] if quiet else groups:
        n = wanted[g.protocol]
        flag = f" (fewer than {n} seeds)" if len(g.seeds) < n else ""
        print(
            f"{g.protocol}/{g.weights}: {len(g.seeds)} finished{flag}"
            + (f", {len(g.unfinished)} unfinished" if g.unfinished else "")
            + (f", {len(g.failed)} FAILED" if g.failed else "")
        )
        for p, e in g.failed:
            print(f"  failed: {p}: {e}")
        for p in g.unfinished:
            print(f"  unfinished: {p}")


def write_comparison(weights, built: dict, out: Path, written: dict) -> list | None:
    """comparison.csv of each later ``weights`` name against the first (None: no --compare)."""
    if not weights:
        return None
    if len(weights) < 2:
        raise TablesError("--compare needs two or more weights names (the first is the base)")
    diffs = comparisons(built, list(weights))
    written["comparison.csv"] = out / "comparison.csv"
    written["comparison.csv"].write_text(compare_csv(diffs))
    return diffs


def main(args: argparse.Namespace) -> dict[str, Path]:
    out = args.out or (args.runs[0] / "tables")
    if args.source and args.source not in known_sources():
        raise TablesError(
            f"--source {args.source!r} is in no reference table; known: {sorted(known_sources())}"
        )
    groups = [] if args.reference_only else collect(args.runs)
    for g in groups:
        table_for(g.base_protocol if g.seeds else g.protocol.removesuffix("_smoke"))
    for fig in args.figure:
        if not fig.is_file():
            raise TablesError(f"--figure {fig}: no such file")
    written: dict[str, Path] = {}
    built: dict = {}
    out.mkdir(parents=True, exist_ok=True)
    for spec in TABLES.values():
        # a table of runs' protocols (an ablation table keeps its paper rows even when no
        # checkpoint records its factor); one selecting checkpoints (``only``) needs one
        has_runs = any(g.seeds and g.base_protocol in spec.protocols for g in groups)
        if spec.only:
            has_runs = bool(table_groups(spec, groups, _labels(args.label)))
        if has_runs or (args.reference_only and spec.reference_csv):
            written.update(write_table(spec, groups, args, out, built))
    summarise_groups(groups, out, args.quiet)
    diffs = write_comparison(args.compare, built, out, written)
    figures = list(args.figure)
    seg_sets = segfigure.prediction_sets(args.runs) if not args.reference_only else {}
    if seg_sets:  # GSG's Figure 2 layout from the segmentation seeds' kept predictions
        written["segmentation_figure.png"] = segfigure.draw(
            seg_sets, out / "segmentation_figure.png"
        )
        figures.append(written["segmentation_figure.png"])
    if args.html:
        from tables.report import write_report

        written["report.html"] = write_report(out / "report.html", built, groups, dict(written),
                                              args.runs, args.decimals, figures,
                                              diffs)  # fmt: skip
    for path in [] if args.quiet else written.values():
        print(f"wrote {path}")
    return written


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
