"""Render a built table with pandas: CSV (every number), Markdown, LaTeX (booktabs) and HTML.

``numbers(spec, rows)`` is the table as a DataFrame of numbers (one row per table row: mean,
std, n, 95% CI, delta and Welch p-value per column), written by ``DataFrame.to_csv``.
``display(spec, rows, ...)`` is the table as the papers print it, a DataFrame of cell texts
beside a mask of the cells in bold; Markdown is its ``DataFrame.to_markdown`` (tabulate),
LaTeX and HTML its ``Styler``. Cells of our rows read "mean ± std" over seeds; the best two
values per column (paper and ours together) are bold, as in the paper (not in a column
with values in two rows or fewer); a dagger marks cells whose Welch t-test against the
comparison row gives p < 0.05; rows with fewer than 5 seeds carry an asterisk after their
seed count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tables.aggregate import IntervalStat, Stat
from tables.layout import FACTORS, Column, Row, TableSpec

SIGNIFICANT = 0.05
IDENTITY = ("table", "kind", "source", "method", "epochs", "arch", "weights", "synthetic",
            "n_seeds", "few_seeds", "delta_ref", "p_vs")  # fmt: skip
STATS = ("", "_std", "_n", "_ci95", "_delta", "_p")


def _float(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def numbers(spec: TableSpec, rows: list[Row]):
    """The table's numbers: one row per table row, ``IDENTITY`` then per column ``<key>``,
    ``<key>_std``, ``_n``, ``_ci95``, ``_delta``, ``_p`` (object dtype: None where empty)."""
    import pandas as pd

    columns = [*IDENTITY] + [f"{c.key}{s}" for c in spec.columns for s in STATS]
    records = []
    for r in rows:
        rec = dict(zip(IDENTITY, (
            spec.name, r.kind, r.source, r.method, r.epochs, r.arch, r.weights,
            int(r.synthetic), ";".join(f"{p}={k}" for p, k in sorted(r.n_seeds.items())),
            int(r.few_seeds), r.delta_ref, r.p_vs,
        )))  # fmt: skip
        for c in spec.columns:
            v = r.cells.get(c.key)
            stat = isinstance(v, Stat)
            rec[c.key] = _float(v.mean if stat else v)
            rec[f"{c.key}_std"] = _float(v.std) if stat else None
            rec[f"{c.key}_n"] = v.n if stat else None
            rec[f"{c.key}_ci95"] = _float(v.ci95) if stat else None
            rec[f"{c.key}_delta"] = _float(r.delta.get(c.key))
            rec[f"{c.key}_p"] = _float(r.pvalues.get(c.key))
        records.append(rec)
    return pd.DataFrame(records, columns=columns, dtype=object)


def to_csv(spec: TableSpec, rows: list[Row]) -> str:
    """``numbers`` as CSV: floats as Python prints them (full precision), empty where none."""
    return numbers(spec, rows).to_csv(index=False, lineterminator="\n", na_rep="")


def best_two(spec: TableSpec, rows: list[Row], decimals: int) -> dict[str, set[int]]:
    """Per column, indices of the rows holding the two highest (rounded) values; ties count.
    A column with values in two rows or fewer has none (the best two of two says nothing)."""
    out: dict[str, set[int]] = {}
    if not spec.rank:
        return {c.key: set() for c in spec.columns}
    for c in spec.columns:
        values = [round(m, decimals) for r in rows if (m := r.mean(c.key)) is not None]
        vals = sorted(set(values), reverse=True)[:2] if len(values) > 2 else []
        out[c.key] = {
            i
            for i, r in enumerate(rows)
            if (m := r.mean(c.key)) is not None and round(m, decimals) in vals
        }
    return out


@dataclass(frozen=True)
class Flavour:
    """How one output format writes a cell."""

    pm: str  # between mean and std
    missing: str  # an empty cell
    dash: str  # an empty label (epochs, arch)
    bold: str  # format of a bold cell, "{}" the text
    dagger: str  # appended to a significant cell
    math: str  # format of every value cell
    star: str  # appended to the first label of a row with few seeds
    escape: bool  # LaTeX-escape the labels
    dagger_in_bold: bool = False  # Markdown: **58.7 ± 0.2 †**


MARKDOWN = Flavour(" ± ", "–", "–", "**{}**", " †", "{}", "", False, dagger_in_bold=True)
HTML = Flavour(" ± ", "–", "–", "{}", " †", "{}", "", False)  # bold by CSS
LATEX = Flavour(r" \pm ", "--", "--", r"\mathbf{{{}}}", r"^{\dagger}", "${}$", "$^*$", True)


def _value(r: Row, key: str, decimals: int, pm: str, fmt: str = "") -> str:
    v = r.cells.get(key)
    if fmt:  # a table of settings (the selected C): one value, general format
        return format(v.mean if isinstance(v, Stat) else v, fmt)
    if isinstance(v, IntervalStat):  # few-shot: mean ± the episodes' 95% interval
        return f"{v.mean:.{decimals}f}{pm}{v.interval:.{decimals}f}"
    if isinstance(v, Stat):
        s = f"{v.mean:.{decimals}f}"
        if v.n > 1:
            s += f"{pm}{v.std:.{decimals}f}"
        return s
    return f"{v:.{decimals}f}"


def _seeds(r: Row) -> str:
    if r.kind != "ours":
        return ""
    n = min(r.n_seeds.values()) if r.n_seeds else 0
    return f"{n}{'*' if r.few_seeds else ''}"


def delta_keys(spec: TableSpec, rows: list[Row]) -> list[str]:
    """One delta column per block that has a delta: its first metric (AP)."""
    seen, keys = set(), []
    for c in spec.columns:
        if c.block not in seen:
            seen.add(c.block)
            keys.append(c.key)
    return [k for k in keys if any(k in r.delta for r in rows)]


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                 ("#", r"\#")):  # fmt: skip
        s = s.replace(a, b)
    return s


def tex_header(c: Column) -> str:
    """$AP^{bb}_{50}$ for COCO boxes, $AP^{mk}$ for masks, $AP_{75}$ for VOC; a
    classification column's label as it is."""
    if c.task == "cls":
        return _tex_escape(c.label)
    sup = {"bbox": "bb", "segm": "mk"}[c.task] if c.key.startswith("coco") else ""
    sub = c.metric[2:]
    return "$AP" + (f"^{{{sup}}}" if sup else "") + (f"_{{{sub}}}" if sub else "") + "$"


def lead_headers(spec: TableSpec) -> list[str]:
    first = FACTORS[spec.factor][1] if spec.factor else "Method"
    return [first, "Epochs"] + (["Arch"] if spec.arch_column else [])


def display(spec: TableSpec, rows: list[Row], decimals: int, flavour: Flavour,
            seeds: bool = True, deltas: bool = True):  # fmt: skip
    """(cells, bold): the table as printed, a DataFrame of texts (label columns, ``Seeds``,
    one column per ``spec.columns`` key, one ``Δ <key>`` per block with a delta), and a
    same-shaped boolean DataFrame of the best-two cells."""
    import pandas as pd

    best = best_two(spec, rows, decimals)
    dkeys = delta_keys(spec, rows) if deltas else []
    lead = lead_headers(spec)
    columns = lead + (["Seeds"] if seeds else []) + [c.key for c in spec.columns]
    columns += [f"Δ {k}" for k in dkeys]
    texts, bold = [], []
    for i, r in enumerate(rows):
        name = r.label if r.kind == "ours" else r.method
        labels = [name, r.epochs or flavour.dash]
        labels += [r.arch or flavour.dash] if spec.arch_column else []
        if flavour.escape:
            labels = [_tex_escape(x) for x in labels]
        if r.few_seeds:
            labels[0] += flavour.star
        line, marks = labels + ([_seeds(r)] if seeds else []), [False] * (len(lead) + seeds)
        for c in spec.columns:
            if r.cells.get(c.key) is None:
                line.append(flavour.missing)
                marks.append(False)
                continue
            s = _value(r, c.key, decimals, flavour.pm, spec.fmt)
            dagger = flavour.dagger if r.pvalues.get(c.key, 1.0) < SIGNIFICANT else ""
            if flavour.dagger_in_bold:
                s, dagger = s + dagger, ""
            if i in best[c.key]:
                s = flavour.bold.format(s)
            s += dagger
            line.append(flavour.math.format(s))
            marks.append(i in best[c.key])
        line += [f"{r.delta[k]:+.{decimals}f}" if k in r.delta else "" for k in dkeys]
        marks += [False] * len(dkeys)
        texts.append(line)
        bold.append(marks)
    return pd.DataFrame(texts, columns=columns), pd.DataFrame(bold, columns=columns, dtype=bool)


def notes(spec: TableSpec, rows: list[Row]) -> list[str]:
    """The lines under a table: the paper rows' sources, the asterisk, dagger and delta."""
    out = []
    if any(r.kind == "paper" for r in rows):
        out.append("Paper rows: " + ", ".join(sorted({r.source for r in rows if r.source})))
    if any(r.few_seeds for r in rows):
        n = max(r.min_seeds for r in rows if r.few_seeds)
        out.append(f"\\* fewer than {n} seeds (the protocol's number of trials).")
    if any(p < SIGNIFICANT for r in rows for p in r.pvalues.values()):
        vs = next(r.p_vs for r in rows if r.pvalues)
        out.append(f"† Welch's t-test against {vs}: p < {SIGNIFICANT}.")
    ref = sorted({r.delta_ref for r in rows if r.delta_ref})
    if ref:
        out.append("Δ against " + "; ".join(ref) + ".")
    return out


def column_labels(spec: TableSpec) -> dict[str, str]:
    """Display header of each value column: ``<block> <label>``, and of each delta."""
    labels = {c.key: f"{c.block} {c.label}" for c in spec.columns}
    return labels | {f"Δ {k}": f"Δ {v}" for k, v in labels.items()}


def to_markdown(spec: TableSpec, rows: list[Row], decimals: int = 1) -> str:
    """A pipe table (tabulate, aligned columns): labels left, numbers right."""
    cells, _ = display(spec, rows, decimals, MARKDOWN)
    cells = cells.rename(columns=column_labels(spec))
    n_text = len(lead_headers(spec)) + 1
    align = ["left"] * n_text + ["right"] * (cells.shape[1] - n_text)
    table = cells.to_markdown(index=False, tablefmt="pipe", colalign=align,
                              disable_numparse=True)  # fmt: skip
    return "\n".join([f"**{spec.title}**", "", table, ""] + notes(spec, rows)) + "\n"


def to_latex(spec: TableSpec, rows: list[Row], decimals: int = 1) -> str:
    """A booktabs table through pandas' Styler: a header row of blocks (multicolumn, with
    cmidrules), our cells as $mean \\pm std$, the best two per column in \\mathbf, a midrule
    between the paper's rows and ours."""
    import pandas as pd

    cells, _ = display(spec, rows, decimals, LATEX, seeds=False, deltas=False)
    lead = [_tex_escape(x) for x in lead_headers(spec)]
    cells.columns = pd.MultiIndex.from_tuples(
        [("", x) for x in lead] + [(_tex_escape(c.block), tex_header(c)) for c in spec.columns]
    )
    blocks: list[tuple[str, int]] = []
    for c in spec.columns:
        if blocks and blocks[-1][0] == c.block:
            blocks[-1] = (c.block, blocks[-1][1] + 1)
        else:
            blocks.append((c.block, 1))
    fmt = "l c " + ("l " if spec.arch_column else "") + " ".join("c" * n for _, n in blocks)
    text = (
        cells.style.hide(axis="index")
        .set_caption(_tex_escape(spec.title))
        .to_latex(
            column_format=fmt,
            position="t",
            position_float="centering",
            hrules=True,
            multicol_align="c",
        )  # fmt: skip
    )
    lines = text.splitlines()
    start, rules = len(lead) + 1, []
    for _, n in blocks:
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    top = lines.index(r"\toprule")
    lines.insert(top + 2, " ".join(rules))  # under the row of blocks
    first_ours = next((i for i, r in enumerate(rows) if r.kind == "ours"), None)
    if first_ours and any(r.kind == "paper" for r in rows[:first_ours]):
        body = lines.index(r"\midrule") + 1
        lines.insert(body + first_ours, r"\midrule")
    return "\n".join(lines) + "\n"


def to_html(spec: TableSpec, rows: list[Row], decimals: int = 1) -> str:
    """An HTML ``<table>`` (Styler): cells of class ``paper`` or ``ours``, the best two per
    column also ``best``; hovering a mean over seeds shows n and its 95% interval."""
    cells, bold = display(spec, rows, decimals, HTML)
    labels = column_labels(spec)
    tips = cells.copy()
    for i, r in enumerate(rows):
        for j, col in enumerate(cells.columns):
            v = r.cells.get(col)
            tips.iat[i, j] = (
                f"n={v.n}, 95% CI ±{v.ci95:.{decimals}f}" if isinstance(v, Stat) and v.n > 1 else ""
            )
    classes = bold.map(lambda b: " best" if b else "")
    for i, r in enumerate(rows):
        classes.iloc[i] = r.kind + classes.iloc[i]
    styler = (
        cells.style.hide(axis="index")
        .relabel_index([labels.get(c, c) for c in cells.columns], axis="columns")
        .set_td_classes(classes)
        .set_tooltips(tips)
        .set_uuid(spec.name)  # the table's id: T_<name>
        .set_table_attributes('class="results"')
    )
    return styler.to_html()
