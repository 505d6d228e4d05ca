"""``curves.png`` of a pretraining run: loss per logged step, kNN accuracy per epoch."""

from __future__ import annotations

from pathlib import Path

from pretrain.knn import has_knn


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss per logged step and kNN accuracy per epoch, from the run's metrics records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h for h in history if h["type"] == "step"]
    epochs = [h for h in history if h["type"] == "epoch" and has_knn(h)]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in sorted({k for h in steps for k in h if k.startswith("train/loss")}):
        a.plot([h["iteration"] for h in steps], [h[key] for h in steps], label=key)
    a.set_xlabel("step")
    losses = [v for h in steps for k, v in h.items() if k.startswith("train/loss")]
    if losses and min(losses) > 0:  # SimSiam's negative cosine is negative
        a.set_yscale("log")
    if steps:
        a.legend(fontsize=7)
    for key in sorted({k for h in epochs for k in h if k.startswith("knn/top1")}):
        b.plot([h["epoch"] for h in epochs], [h[key] for h in epochs], marker="o", label=key)
    b.set_xlabel("epoch")
    b.set_ylabel("kNN top-1 (%)")
    if epochs:
        b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
