"""Checkpoints compared per table: B - A per column, the 95% confidence interval of that
difference and Welch's two-sided p-value, from the seeds of both rows.

Interval of the difference of two means with unequal variances (Welch): half-width
``t_{0.975, df} * sqrt(sa^2/na + sb^2/nb)``, df by Welch-Satterthwaite; undefined (NaN) when
a side has fewer than two seeds or both have zero variance. A few-shot cell (its own
episode interval ``h_a``, ``h_b`` at 1.96) gets the normal interval
``sqrt(h_a^2 + h_b^2)`` and no t-test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tables.aggregate import IntervalStat, Stat, welch
from tables.layout import Row, TableSpec


@dataclass
class Difference:
    table: str
    column: str  # the column's key
    label: str  # block / label
    a: str  # baseline row label
    b: str
    mean_a: float
    mean_b: float
    n_a: int
    n_b: int
    diff: float
    ci95: float  # half-width; NaN when undefined
    p: float  # Welch; NaN when undefined


def diff_ci95(a: Stat, b: Stat) -> float:
    """Half-width of the 95% interval of mean(b) - mean(a)."""
    if isinstance(a, IntervalStat) and isinstance(b, IntervalStat):
        return math.hypot(a.ci95, b.ci95)
    if a.n < 2 or b.n < 2:
        return math.nan
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    if va + vb == 0:
        return math.nan
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    from scipy.stats import t

    return float(t.ppf(0.975, df)) * math.sqrt(va + vb)


def compare_rows(
    spec: TableSpec, rows: list[Row], base: str, others: list[str]
) -> list[Difference]:
    """The differences of each of ``others``' rows against ``base``'s in ``spec`` (weights
    names; real-data and synthetic rows separately)."""
    ours = {(r.weights, r.synthetic): r for r in rows if r.kind == "ours"}
    out = []
    for synthetic in (False, True):
        ra = ours.get((base, synthetic))
        for other in others:
            rb = ours.get((other, synthetic))
            if ra is None or rb is None:
                continue
            for c in spec.columns:
                sa, sb = ra.cells.get(c.key), rb.cells.get(c.key)
                if not (isinstance(sa, Stat) and isinstance(sb, Stat)):
                    continue
                p = math.nan if isinstance(sa, IntervalStat) else welch(sa, sb)
                out.append(Difference(spec.name, c.key, f"{c.block} {c.label}", ra.label,
                                      rb.label, sa.mean, sb.mean, sa.n, sb.n, sb.mean - sa.mean,
                                      diff_ci95(sa, sb), p))  # fmt: skip
    return out


def comparisons(built: dict[str, tuple[TableSpec, list[Row]]], weights: list[str]):
    """Every table's differences, each of ``weights[1:]`` against ``weights[0]``."""
    base, *others = weights
    return [d for spec, rows in built.values() for d in compare_rows(spec, rows, base, others)]


def to_csv(diffs: list[Difference]) -> str:
    import csv
    import io

    f = io.StringIO()
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["table", "column", "a", "b", "mean_a", "mean_b", "n_a", "n_b", "diff",
                "ci95", "p_welch"])  # fmt: skip
    for d in diffs:
        w.writerow([d.table, d.column, d.a, d.b, d.mean_a, d.mean_b, d.n_a, d.n_b, d.diff,
                    d.ci95, d.p])  # fmt: skip
    return f.getvalue()


def _num(x: float, decimals: int) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{decimals}f}"


def to_html(diffs: list[Difference], decimals: int, escape) -> str:
    """One table per (table, A, B): column, A, B, B - A, its 95% interval, p."""
    if not diffs:
        return "<p>No table has rows of both checkpoints yet.</p>"
    out = []
    groups: dict[tuple[str, str, str], list[Difference]] = {}
    for d in diffs:
        groups.setdefault((d.table, d.a, d.b), []).append(d)
    for (table, a, b), ds in groups.items():
        out.append(f"<h3>{escape(table)}: B = {escape(b)} against A = {escape(a)}</h3>"
                   '<table class="cmp"><tr><th>column</th><th>A (n)</th><th>B (n)</th>'
                   "<th>B − A</th><th>95% interval</th><th>Welch p</th></tr>")  # fmt: skip
        for d in ds:
            lo, hi = d.diff - d.ci95, d.diff + d.ci95
            ci = "n/a" if math.isnan(d.ci95) else f"[{_num(lo, decimals)}, {_num(hi, decimals)}]"
            cls = ' class="sig"' if not math.isnan(d.ci95) and (lo > 0 or hi < 0) else ""
            out.append(f"<tr{cls}><td>{escape(d.label)}</td>"
                       f"<td>{_num(d.mean_a, decimals)} ({d.n_a})</td>"
                       f"<td>{_num(d.mean_b, decimals)} ({d.n_b})</td>"
                       f"<td>{d.diff:+.{decimals}f}</td><td>{ci}</td>"
                       f"<td>{'n/a' if math.isnan(d.p) else f'{d.p:.3g}'}</td></tr>")  # fmt: skip
        out.append("</table>")
    return "".join(out)
