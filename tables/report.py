"""``report.html``: every table, plot and seed on one self-contained page.

    python -m tables --runs output --html          # -> output/tables/report.html

Sections: a summary (finished, unfinished and failed seeds); what is missing or failed
(each failed seed's error, each unfinished seed, each of our rows' empty cells); one
section per table (the table beside its paper rows, its notes, its plots embedded as
``data:`` URIs, and the per-seed spread: every seed's value of the table's metrics, with
links to the seed's ``config.yaml``, ``metrics.json``, ``train_metrics.jsonl`` and
``log.txt``); extra figures (``--figure``); the environments the seeds ran in
(``environment.json``, one entry per distinct record). The page needs no network and no
script; links are relative to the report, so the folder can be moved with its runs.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import os
from collections import defaultdict
from pathlib import Path

from tables.aggregate import PER_DATASET_PROTOCOLS, Group
from tables.layout import Row, TableSpec, table_groups
from tables.render import notes, to_html

SEED_FILES = ("config.yaml", "metrics.json", "train_metrics.jsonl", "log.txt")
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 96em; color: #222; }
tr.sig td { background: #eef6ee; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .8em 0; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .2em .45em; white-space: nowrap; }
th { background: #f4f4f4; } caption { font-weight: bold; text-align: left; padding: .3em 0; }
td.ours { background: #eef5ff; } td.best { font-weight: bold; }
td.failed, li.failed { color: #a00; } .note { color: #555; font-size: .85em; }
img { max-width: 100%; border: 1px solid #eee; margin: .3em; }
.figures { display: flex; flex-wrap: wrap; align-items: flex-start; }
.figures figure { margin: .3em; } figcaption { font-size: .8em; color: #555; }
pre { background: #f7f7f7; padding: .6em; font-size: .8em; overflow-x: auto; }
"""


def _e(s: object) -> str:
    return html.escape(str(s))


def data_uri(path: Path) -> str:
    """A PNG (or JPEG, SVG) file as a ``data:`` URI."""
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
            ".svg": "image/svg+xml"}[path.suffix.lower()]  # fmt: skip
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def _figure(path: Path) -> str:
    return (
        f'<figure><img src="{data_uri(path)}" alt="{_e(path.name)}">'
        f"<figcaption>{_e(path.name)}</figcaption></figure>"
    )


def _link(target: Path, base: Path, text: str) -> str:
    return f'<a href="{_e(os.path.relpath(target, base))}">{_e(text)}</a>'


def _seed_links(seed_dir: Path, base: Path) -> str:
    return " ".join(_link(seed_dir / f, base, f) for f in SEED_FILES if (seed_dir / f).exists())


def _metric_value(metrics: dict, task: str, metric: str) -> float | None:
    """One seed's value of a table column (``Column.task`` / ``metric``)."""
    if task == "episodes":
        v = (metrics.get("episodes", {}).get(metric) or {}).get("mean")
    else:
        v = (metrics.get(task) or {}).get(metric) if isinstance(metrics.get(task), dict) else None
    return None if v is None else float(v)


def spread(spec: TableSpec, groups: list[Group], base: Path, decimals: int) -> str:
    """Every finished seed of the table's protocols: its value of each column it fills."""
    lines = []
    for g in table_groups(spec, groups):
        cols = [c for c in spec.columns if c.protocol == g.base_protocol
                and (not g.task or (c.dataset or c.metric) == g.task)]  # fmt: skip
        for s in g.seeds:
            values = [(c, _metric_value(s.metrics, c.task, c.metric)) for c in cols]
            cells = " ".join(
                f"{_e(c.block)} {_e(c.label)}: <b>{v:.{decimals}f}</b>"
                for c, v in values
                if v is not None
            )
            where = "/".join(x for x in (g.protocol, g.weights, g.task, s.path.name) if x)
            lines.append(
                f"<tr><td>{_e(where)}</td><td>{_e(s.metrics.get('seed', ''))}</td>"
                f"<td>{cells}</td><td>{_seed_links(s.path, base)}</td></tr>"
            )
    if not lines:
        return ""
    return (
        '<table class="seeds"><caption>Per-seed values</caption><tr><th>Seed folder</th>'
        "<th>Seed</th><th>Values</th><th>Files</th></tr>" + "".join(lines) + "</table>"
    )


def _where(c) -> str:
    """The protocol (and downstream dataset) that fills a column."""
    if c.protocol in PER_DATASET_PROTOCOLS:
        return f"{c.protocol}/{c.dataset or c.metric}"
    return c.protocol


def missing(tables: dict[str, tuple[TableSpec, list[Row]]], groups: list[Group],
            base: Path) -> list[str]:  # fmt: skip
    """List items: failed seeds (with their error), unfinished seeds, our empty cells."""
    items = []
    for g in groups:
        where = "/".join(x for x in (g.protocol, g.weights, g.task) if x)
        for path, err in g.failed:
            items.append(
                f'<li class="failed">FAILED {_e(where)}/{_e(path.name)}: {_e(err)} '
                f"({_link(path / 'failed.json', base, 'failed.json')})</li>"
            )
        for path in g.unfinished:
            items.append(f"<li>unfinished {_e(where)}/{_e(path.name)} (no metrics.json)</li>")
    for spec, rows in tables.values():
        for r in rows:
            if r.kind != "ours":
                continue
            cols = [c for c in spec.columns if c.key != spec.mean_column]
            empty = sorted({_where(c) for c in cols if r.cells.get(c.key) is None})
            if empty:
                items.append(
                    f"<li>{_e(spec.name)}: {_e(r.label)} has no finished seed of "
                    f"{_e(', '.join(empty))}</li>"
                )
    return items


def environments(groups: list[Group], base: Path) -> str:
    """Each distinct ``environment.json`` record, and the seeds that ran in it."""
    by_record: dict[str, list[Path]] = defaultdict(list)
    for g in groups:
        for s in g.seeds:
            path = s.path / "environment.json"
            if path.exists():
                try:
                    record = json.dumps(json.loads(path.read_text()), indent=1, sort_keys=True)
                except json.JSONDecodeError:
                    record = f"(malformed JSON in {path.name})"
                by_record[record].append(s.path)
    if not by_record:
        return "<p>No seed recorded its environment (environment.json).</p>"
    out = []
    for k, (record, seeds) in enumerate(sorted(by_record.items(), key=lambda x: -len(x[1]))):
        first = _link(seeds[0] / "environment.json", base, "environment.json")
        out.append(
            f"<h3>Environment {k + 1}: {len(seeds)} seed(s), e.g. {first}</h3>"
            f"<pre>{_e(record)}</pre>"
        )
    return "".join(out)


def comparison(diffs: list, decimals: int) -> str:
    """The comparison view: per table, each checkpoint against the first."""
    from tables.compare import to_html as compare_html

    return (
        '<h2 id="comparison">Comparison of the checkpoints</h2><p class="note">Per table and '
        "column: B − A, the 95% interval of the difference (Welch, unequal variances; "
        "highlighted when it excludes 0) and Welch's two-sided p; n = finished seeds.</p>"
        + compare_html(diffs, decimals, _e)
    )


def write_report(
    path: Path,
    tables: dict[str, tuple[TableSpec, list[Row]]],
    groups: list[Group],
    written: dict[str, Path],
    roots: list[Path],
    decimals: int = 1,
    figures: list[Path] = (),
    diffs: list | None = None,
) -> Path:
    """Write the report to ``path``; ``tables`` maps a table name to its spec and built
    rows, ``written`` the files ``python -m tables`` wrote (its plots are embedded)."""
    base = path.parent
    n_fin = sum(len(g.seeds) for g in groups)
    n_unf = sum(len(g.unfinished) for g in groups)
    n_fail = sum(len(g.failed) for g in groups)
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = [
        "<h1>Transfer results</h1>",
        f'<p class="note">Written {_e(when)} from {_e(", ".join(map(str, roots)))}.</p>',
        f'<p id="summary">{len(groups)} groups (protocol, weights): {n_fin} finished seeds, '
        f"{n_unf} unfinished, {n_fail} failed; {len(tables)} tables.</p>",
        "<h2>Missing or failed</h2>",
    ]
    items = missing(tables, groups, base)
    body.append("<ul>" + "".join(items) + "</ul>" if items else "<p>Nothing.</p>")
    if tables:
        body.append(
            "<p>Tables: "
            + " · ".join(f'<a href="#{_e(n)}">{_e(n)}</a>' for n in tables)
            + (' · <a href="#comparison">comparison</a>' if diffs is not None else "")
            + "</p>"
        )
    for name, (spec, rows) in tables.items():
        body.append(f'<h2 id="{_e(name)}">{_e(spec.title)}</h2>')
        body.append(to_html(spec, rows, decimals))
        body.append("".join(f'<p class="note">{_e(n)}</p>' for n in notes(spec, rows)))
        files = " ".join(_link(written[f"{name}.{x}"], base, f"{name}.{x}")
                         for x in ("csv", "md", "tex") if f"{name}.{x}" in written)  # fmt: skip
        body.append(f'<p class="note">Files: {files}</p>')
        plots = [p for n, p in written.items() if n.endswith(".png")
                 and (n == f"{name}.png" or n.startswith(f"{name}_"))]  # fmt: skip
        if plots:
            body.append('<div class="figures">' + "".join(map(_figure, plots)) + "</div>")
        body.append(spread(spec, groups, base, decimals))
    if diffs is not None:
        body.append(comparison(diffs, decimals))
    if figures:
        body.append("<h2>Figures</h2>")
        body.append('<div class="figures">' + "".join(map(_figure, figures)) + "</div>")
    body.append("<h2>Environments</h2>")
    body.append(environments(groups, base))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Transfer results</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    path.write_text(page)
    return path
