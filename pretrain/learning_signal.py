"""Does a method learn? kNN accuracy after a short run vs the same network at random init.

``python -m pretrain.learning_signal --method simsiam`` writes the synthetic silhouettes
(``synthetic.write_silhouettes``: the shape is the only cue that survives crops), pretrains
a ResNet-18 on 32 px crops with ``--aug crop`` and prints the kNN top-1 (k = 20) of the
random initialisation and of the trained network. The test suite runs it for SimSiam.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from synthetic import write_silhouettes

from .base import HeadConfig
from .train import PretrainConfig, Trainer

SMALL_HEADS = dict(proj_hidden=512, proj_dim=128, pred_hidden=512, mid_dim=128, n_blocks=2,
                   mph_dim=128)


def learning_signal(method: str, out: str | Path, epochs: int = 30, base_lr: float = 0.5,
                    seed: int = 0, per_class: int = 64, workers: int = 2, **overrides) -> dict:
    """Pretrain ``method`` on silhouettes under ``out``; returns the kNN top-1 (%) at
    random init (``init``) and at the end (``final``), with the run's settings.
    ``overrides``: further ``PretrainConfig`` fields (e.g. ``base_tau=0.9``)."""
    out = Path(out)
    data = out / "silhouettes"
    if not data.is_dir():  # written under a temporary name, so a partial tree is never used
        tmp = out / "silhouettes.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        write_silhouettes(tmp, seed, 48, {"train": per_class, "val": 24})
        tmp.rename(data)
    settings = dict(method=method, arch="resnet18", data=str(data), output=str(out / method),
                    epochs=epochs, batch_size=32, image_size=32, base_lr=base_lr,
                    warmup_epochs=0.0, crop_scale=(0.5, 1.0), aug="crop", seed=seed,
                    workers=workers, knn_every=epochs, save_every=epochs, log_every=1000,
                    heads=HeadConfig(**SMALL_HEADS))
    cfg = PretrainConfig(**{**settings, **overrides})
    trainer = Trainer(cfg)
    trainer.fit()
    knn = [h["knn_top1_k20"] for h in trainer.history
           if h.get("type") == "epoch" and "knn_top1_k20" in h]
    return {"method": method, "epochs": epochs, "steps": trainer.global_step, **overrides,
            "init": knn[0], "final": knn[-1]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="simsiam")
    p.add_argument("--out", default="runs/learning_signal")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--base-lr", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-tau", type=float, default=None,
                   help="EMA momentum of the target network (default: the method's)")
    args = p.parse_args(argv)
    extra = {} if args.base_tau is None else {"base_tau": args.base_tau}
    res = learning_signal(args.method, args.out, args.epochs, args.base_lr, args.seed, **extra)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
