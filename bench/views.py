"""The plan and the status as text (80 columns) and as JSON."""

from __future__ import annotations

from collections import Counter

from bench.plan import PlanRow, Totals, totals, wall_hours
from bench.progress import STATES

WIDTH = 80


def duration(seconds: float | None) -> str:
    """``3h05m``, ``12m``, ``40s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m" if s >= 60 else f"{s}s"


def hours(h: float | None) -> str:
    if h is None:
        return "-"
    return f"{h:.2f}" if h < 10 else f"{h:.1f}"


def _clip(text: str, width: int = WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def _cost_cell(row: PlanRow, notes: dict[str, int]) -> str:
    left = len(row.progress) - row.finished
    if left == 0:
        return "0"
    source = row.source()
    if row.hours is None:
        return "not measured"
    mark = notes.setdefault(source, len(notes) + 1)
    return f"{'~' if row.estimated else ''}{hours(row.hours)} [{mark}]"


def plan_text(rows: list[PlanRow], gpu: str, precision: str, gpus: int, nodes: int) -> str:
    notes: dict[str, int] = {}
    head = (
        f"{'checkpoint':<14}{'protocol':<18}{'dataset':<11}{'seeds':>6}  {'work':<15}{'GPU-h':>14}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        seeds = f"{r.finished}/{len(r.progress)}"
        lines.append(_clip(f"{r.stem[:13]:<14}{r.protocol[:17]:<18}{(r.dataset or '')[:10]:<11}"
                           f"{seeds:>6}  {r.work[:16]:<17}{_cost_cell(r, notes):>12}"))  # fmt: skip
        state = r.state()
        if state not in ("finished", "to run"):
            lines.append(_clip(f"{'':<14}{state}"))
    t = totals(rows)
    lines += ["", *total_lines(t, gpu, precision)]
    if t.seeds_left:
        wall = wall_hours(rows, gpus, nodes)
        lines.append(f"wall time on {gpus} GPU(s) x {nodes} node(s), one seed per GPU, of "
                     f"the costed seeds: {hours(wall)} h")  # fmt: skip
    if notes:
        lines += ["", "GPU-hours from (bench/throughputs.json; ~ = an estimate, not measured):"]
        lines += [_clip(f"[{i}] {s}") for s, i in notes.items()]
    if any(r.protocol == "manyshot_linear" for r in rows):
        lines.append("manyshot_linear: feature extraction only; its fits run on the CPU")
    return "\n".join(lines)


def total_lines(t: Totals, gpu: str, precision: str) -> list[str]:
    out = [f"seeds: {t.seeds - t.seeds_left} of {t.seeds} finished, {t.seeds_left} to run; "
           f"GPU {gpu}, {precision}"]  # fmt: skip
    cost = f"GPU-hours left: {hours(t.hours)} from measured throughputs"
    if t.estimated_hours:
        cost += f" + ~{hours(t.estimated_hours)} estimated"
    out.append(cost)
    if t.not_measured:
        out.append(f"{t.not_measured} row(s) with seeds left are not measured on {gpu} "
                   f"({precision}): not in the total")  # fmt: skip
    return out


def plan_json(rows: list[PlanRow], gpu: str, precision: str, gpus: int, nodes: int) -> dict:
    t = totals(rows)
    return {
        "gpu": gpu,
        "precision": precision,
        "rows": [
            {
                "weights": r.weights,
                "stem": r.stem,
                "protocol": r.protocol,
                "dataset": r.dataset,
                "seeds": len(r.progress),
                "finished": r.finished,
                "state": r.state(),
                "work": r.work,
                "images_per_seed": [ph.images for ph in r.phases],
                "gpu_hours": r.hours,
                "estimated": r.estimated,
                "source": r.source(),
                "throughputs": [None if x is None else x.__dict__ for x in r.rates],
            }
            for r in rows
        ],  # fmt: skip
        "totals": {
            **t.__dict__,
            "wall_hours": wall_hours(rows, gpus, nodes) if t.seeds_left else 0.0,
            "gpus": gpus,
            "nodes": nodes,
        },  # fmt: skip
    }


def _seed_line(r: PlanRow, k: int) -> str:
    """One line per seed (a failed one: and its error's last line below it)."""
    p = r.progress[k]
    name = f"{r.stem[:11]:<12}{(r.protocol + ('/' + r.dataset if r.dataset else ''))[:21]:<22}"
    head = f"{name}s{k:<3}{p.state:<9}"
    if p.state == "failed":
        return head.rstrip() + "\n" + _clip(f"    {p.error}")
    if p.state == "finished":
        return _clip(f"{head}{p.headline}  ({duration(p.wall_time_s)})")
    if p.state == "pending":
        return head.rstrip()
    at = f"{p.iteration}/{p.total}" if p.iteration is not None and p.total else "-"
    rate = f"{p.images_per_s:.1f} img/s" if p.images_per_s else ""
    eta = f"ETA {duration(p.eta_s)}" if p.state == "running" else ""
    return _clip(f"{head}{at:<12}{rate:<12}{eta}")


def status_text(rows: list[PlanRow], title: str) -> str:
    lines = [_clip(title), ""]
    for r in rows:
        lines += [_seed_line(r, k) for k in range(len(r.progress))]
    lines.append("")
    by_ckpt: dict[str, Counter] = {}
    for r in rows:
        by_ckpt.setdefault(r.stem, Counter()).update(p.state for p in r.progress)
    everything = sum(by_ckpt.values(), Counter())
    for name, c in [*by_ckpt.items(), ("suite", everything)]:
        counts = ", ".join(f"{c[s]} {s}" for s in STATES if c[s])
        lines.append(_clip(f"{name + ':':<15}{counts}"))
    return "\n".join(lines)


def status_json(rows: list[PlanRow]) -> dict:
    runs = [
        {"weights": r.weights, "stem": r.stem, "protocol": r.protocol, "dataset": r.dataset,
         "seed": k, "folder": str(r.seed_dirs[k]), **r.progress[k].to_json()}
        for r in rows for k in range(len(r.progress))
    ]  # fmt: skip
    counts = Counter(x["state"] for x in runs)
    return {"runs": runs, "totals": {s: counts.get(s, 0) for s in STATES}}
