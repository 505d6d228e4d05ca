"""Per-protocol strip + box plot of per-seed AP (accuracy, mIoU) for our rows, beside the
paper's means."""

from __future__ import annotations

from pathlib import Path

from tables.aggregate import Group
from tables.layout import TableSpec, read_reference


def paper_means(paper: list, key: str) -> list[tuple[str, float]]:
    """(label, value) of each paper row with a value in column ``key``; the label names the
    method, epochs and, in tables with an arch column, the architecture."""
    return [
        (f"paper: {r.method} {r.epochs} {r.arch}".strip(), r.cells[key])
        for r in paper
        if r.cells.get(key) is not None
    ]


def plot_protocol(
    spec: TableSpec, groups: list[Group], protocol: str, out: Path, source: str | None = None
) -> Path | None:
    """One PNG per (protocol, dataset kind): a panel per task (box AP, mask AP).

    Left of each panel: our rows, one box + the seeds as points; right: the paper's means for
    the same column (on its own axis when our runs are on synthetic data, whose scale differs).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = [g for g in groups if g.seeds and g.protocol == protocol]
    if not ours:
        return None
    synthetic = ours[0].synthetic
    base = ours[0].base_protocol
    wanted = ("cls", "headline")  # AP columns: the AP of each task
    cols = [
        c for c in spec.columns if c.protocol == base and (c.metric == "AP" or c.task in wanted)
    ]
    if not cols:
        return None
    paper = read_reference(spec, source) if spec.reference_csv else []
    fig, axes = plt.subplots(1, len(cols), figsize=(6.5 * len(cols), 4.2), squeeze=False)
    for ax, col in zip(axes[0], cols):
        data = [
            [s.metrics[col.task][col.metric] for s in g.seeds if col.task in s.metrics]
            for g in ours
        ]
        names = [g.weights for g in ours]
        ax.boxplot(data, widths=0.5, showfliers=False)
        for i, vals in enumerate(data, start=1):
            jitter = [i + 0.08 * ((k % 5) - 2) for k in range(len(vals))]
            ax.scatter(jitter, vals, s=18, zorder=3)
        ax.set_ylabel(f"{col.block} {col.label} (per seed)")
        ax.set_title(f"{protocol}: {col.block} {col.label}", fontsize=9)
        means = paper_means(paper, col.key)
        xs = [len(names) + 1 + k * 0.6 for k in range(len(means))]
        if means:
            target = ax.twinx() if synthetic else ax
            target.scatter(xs, [m for _, m in means], marker="_", s=250, color="grey", zorder=2)
            ax.set_xlim(0.4, xs[-1] + 0.6)
            if synthetic:
                target.set_ylabel("paper mean (real data)", color="grey")
        ax.set_xticks(
            list(range(1, len(names) + 1)) + xs,
            names + [m[0] for m in means],
            rotation=60,
            ha="right",
            fontsize=7,
        )
    fig.suptitle(("synthetic data: " if synthetic else "") + spec.title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_datasets(spec: TableSpec, rows: list, out: Path) -> Path | None:
    """One PNG of a per-dataset table (recognition): for each column, a bar per of our rows
    (its mean over seeds; few-shot: with the 95% interval) and the paper's values as grey
    ticks beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ours = [r for r in rows if r.kind == "ours"]
    if not ours:
        return None
    paper = [r for r in rows if r.kind == "paper"]
    cols = [c for c in spec.columns if "epoch" not in c.metric]  # accuracies only
    x = np.arange(len(cols))
    width = 0.8 / max(len(ours), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(cols) + 2), 4.2))
    for k, r in enumerate(ours):
        ys = [r.mean(c.key) for c in cols]
        # few-shot cells carry the episodes' 95% interval: drawn as error bars
        err = [getattr(r.cells.get(c.key), "interval", np.nan) for c in cols]
        ax.bar(x - 0.4 + width * (k + 0.5), [np.nan if y is None else y for y in ys], width,
               yerr=err, capsize=2, label=r.label)  # fmt: skip
    for r in paper:
        ys = [r.mean(c.key) for c in cols]
        if any(y is not None for y in ys):
            ax.scatter(x, [np.nan if y is None else y for y in ys], marker="_", s=300,
                       color="grey", zorder=3)  # fmt: skip
            for xi, y in zip(x, ys):
                if y is not None:
                    ax.annotate(f"paper: {r.method}", (xi, y), fontsize=6, color="grey",
                                xytext=(4, 2), textcoords="offset points")  # fmt: skip
    blocks = {c.block for c in cols}
    ticks = [c.label if len(blocks) == 1 else f"{c.block} {c.label}" for c in cols]
    ax.set_xticks(x, ticks, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(cols[0].block if len(blocks) == 1 else "accuracy (%)")
    if spec.name.endswith("_C"):
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    synthetic = all(r.synthetic for r in ours)
    ax.set_title(("synthetic data: " if synthetic else "") + spec.title, fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
