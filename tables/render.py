"""Write a built table as CSV (all numbers), Markdown and LaTeX (booktabs).

Cells of our rows read "mean ± std" over seeds; the best two values per column (paper and
ours together) are bold in LaTeX and Markdown, as in the paper (not in a column with two
rows or fewer); a dagger marks cells whose
Welch t-test against the comparison row gives p < 0.05; rows with fewer than 5 seeds carry
an asterisk after their seed count.
"""

from __future__ import annotations

import csv
import io
import math

from tables.aggregate import IntervalStat, Stat
from tables.layout import FACTORS, Column, Row, TableSpec

SIGNIFICANT = 0.05


def _num(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))


def to_csv(spec: TableSpec, rows: list[Row]) -> str:
    """One row per table row; for each column: mean, std, n, ci95, delta and p-value."""
    head = [
        "table",
        "kind",
        "source",
        "method",
        "epochs",
        "arch",
        "weights",
        "synthetic",
        "n_seeds",
        "few_seeds",
        "delta_ref",
        "p_vs",
    ]
    for c in spec.columns:
        head += [
            c.key,
            f"{c.key}_std",
            f"{c.key}_n",
            f"{c.key}_ci95",
            f"{c.key}_delta",
            f"{c.key}_p",
        ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in rows:
        n = ";".join(f"{p}={k}" for p, k in sorted(r.n_seeds.items()))
        line = [
            spec.name,
            r.kind,
            r.source,
            r.method,
            r.epochs,
            r.arch,
            r.weights,
            int(r.synthetic),
            n,
            int(r.few_seeds),
            r.delta_ref,
            r.p_vs,
        ]
        for c in spec.columns:
            v = r.cells.get(c.key)
            if isinstance(v, Stat):
                line += [_num(v.mean), _num(v.std), v.n, _num(v.ci95)]
            else:
                line += [_num(v), "", "", ""]
            line += [_num(r.delta.get(c.key)), _num(r.pvalues.get(c.key))]
        w.writerow(line)
    return buf.getvalue()


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


def _cell(r: Row, key: str, decimals: int, pm: str, fmt: str = "") -> str:
    v = r.cells.get(key)
    if v is None:
        return "–"
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


def _delta_keys(spec: TableSpec) -> list[str]:
    """One delta column per block: its first metric (AP)."""
    seen, keys = set(), []
    for c in spec.columns:
        if c.block not in seen:
            seen.add(c.block)
            keys.append(c.key)
    return keys


def _first_header(spec: TableSpec) -> str:
    return FACTORS[spec.factor][1] if spec.factor else "Method"


def _lead(spec: TableSpec, r: Row, dash: str) -> list[str]:
    """The row's label columns: method (or factor value), epochs[, arch]."""
    name = r.label if r.kind == "ours" else r.method
    return [name, r.epochs or dash] + ([r.arch or dash] if spec.arch_column else [])


def to_markdown(spec: TableSpec, rows: list[Row], decimals: int = 1) -> str:
    bold = best_two(spec, rows, decimals)
    dkeys = [k for k in _delta_keys(spec) if any(k in r.delta for r in rows)]
    labels = {c.key: f"{c.block} {c.label}" for c in spec.columns}
    lead = [_first_header(spec), "Epochs"] + (["Arch"] if spec.arch_column else [])
    head = (
        lead + ["Seeds"] + [labels[c.key] for c in spec.columns] + [f"Δ {labels[k]}" for k in dkeys]
    )
    n_text = len(lead) + 1
    lines = [
        f"**{spec.title}**",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * n_text + ["---:"] * (len(head) - n_text)) + "|",
    ]
    for i, r in enumerate(rows):
        cells = []
        for c in spec.columns:
            s = _cell(r, c.key, decimals, " ± ", spec.fmt)
            if r.pvalues.get(c.key, 1.0) < SIGNIFICANT:
                s += " †"
            cells.append(f"**{s}**" if i in bold[c.key] else s)
        deltas = [f"{r.delta[k]:+.{decimals}f}" if k in r.delta else "" for k in dkeys]
        lines.append("| " + " | ".join(_lead(spec, r, "–") + [_seeds(r)] + cells + deltas) + " |")
    notes = [
        "",
        "Paper rows: " + ", ".join(sorted({r.source for r in rows if r.source}))
        if any(r.kind == "paper" for r in rows)
        else "",
    ]
    if any(r.few_seeds for r in rows):
        notes.append("\\* fewer than 5 seeds (the protocol's number of trials).")
    if any(p < SIGNIFICANT for r in rows for p in r.pvalues.values()):
        vs = next(r.p_vs for r in rows if r.pvalues)
        notes.append(f"† Welch's t-test against {vs}: p < {SIGNIFICANT}.")
    ref = sorted({r.delta_ref for r in rows if r.delta_ref})
    if ref:
        notes.append("Δ against " + "; ".join(ref) + ".")
    return "\n".join(lines + [n for n in notes if n]) + "\n"


def _tex_escape(s: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
    ):
        s = s.replace(a, b)
    return s


def _tex_header(c: Column) -> str:
    """$AP^{bb}_{50}$ for COCO boxes, $AP^{mk}$ for masks, $AP_{75}$ for VOC; a
    classification column's label as it is."""
    if c.task == "cls":
        return _tex_escape(c.label)
    sup = {"bbox": "bb", "segm": "mk"}[c.task] if c.key.startswith("coco") else ""
    sub = c.metric[2:]
    return "$AP" + (f"^{{{sup}}}" if sup else "") + (f"_{{{sub}}}" if sub else "") + "$"


def to_latex(spec: TableSpec, rows: list[Row], decimals: int = 1) -> str:
    """A booktabs table; our cells as $mean \\pm std$, best two per column in bold
    (``\\mathbf``)."""
    bold = best_two(spec, rows, decimals)
    blocks: list[tuple[str, int]] = []
    for c in spec.columns:
        if blocks and blocks[-1][0] == c.block:
            blocks[-1] = (c.block, blocks[-1][1] + 1)
        else:
            blocks.append((c.block, 1))
    out = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex_escape(spec.title)}}}",
        r"\begin{tabular}{l c "
        + ("l " if spec.arch_column else "")
        + " ".join("c" * n for _, n in blocks)
        + "}",
        r"\toprule",
    ]
    n_lead = 3 if spec.arch_column else 2
    out.append(
        " & ".join(
            [""] * n_lead + [rf"\multicolumn{{{n}}}{{c}}{{{_tex_escape(b)}}}" for b, n in blocks]
        )
        + r" \\"
    )
    start = n_lead + 1
    rules = []
    for _, n in blocks:
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    out.append(" ".join(rules))

    lead = [_tex_escape(_first_header(spec)), "Epochs"] + (["Arch"] if spec.arch_column else [])
    out.append(" & ".join(lead + [_tex_header(c) for c in spec.columns]) + r" \\")
    out.append(r"\midrule")
    kinds_seen = set()
    for i, r in enumerate(rows):
        if r.kind == "ours" and "ours" not in kinds_seen and kinds_seen:
            out.append(r"\midrule")
        kinds_seen.add(r.kind)
        cells = []
        for c in spec.columns:
            v = r.cells.get(c.key)
            if v is None:
                cells.append("--")
                continue
            s = _cell(r, c.key, decimals, r" \pm ", spec.fmt)
            if i in bold[c.key]:
                s = rf"\mathbf{{{s}}}"
            if r.pvalues.get(c.key, 1.0) < SIGNIFICANT:
                s += r"^{\dagger}"
            cells.append(f"${s}$")
        lead = [_tex_escape(x) for x in _lead(spec, r, "--")]
        if r.few_seeds:
            lead[0] += "$^*$"
        out.append(" & ".join(lead + cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"
