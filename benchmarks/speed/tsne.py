#!/usr/bin/env python
"""t-SNE speed on representation-like features: scikit-learn's TSNE against openTSNE.

    python benchmarks/speed/tsne.py                      # 10,000 x 512 (CIFAR-10's test set)
    python benchmarks/speed/tsne.py --n 2000 --dim 512

The features are ``--classes`` Gaussian clusters in ``--dim`` dimensions (a CIFAR-10 test
set through a 512-d ResNet-18 CIFAR backbone has this shape). Both libraries run with their
defaults for this size (scikit-learn: Barnes-Hut, PCA initialisation, perplexity 30;
openTSNE: FFT-accelerated interpolation, PCA initialisation, perplexity 30) on every core,
and the script prints seconds per embedding and, as a sanity check of each result, the
1-nearest-neighbour accuracy of the 2-d points against the cluster labels.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def features(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim))
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.normal(0, 1.5, (n, dim))).astype(np.float32), y


def knn1(z: np.ndarray, y: np.ndarray) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    half = len(z) // 2
    return float(KNeighborsClassifier(1).fit(z[:half], y[:half]).score(z[half:], y[half:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=10)
    args = p.parse_args()
    x, y = features(args.n, args.dim, args.classes)
    cores = os.cpu_count() or 1
    print(f"{args.n} x {args.dim} features, {args.classes} clusters, {cores} cores")
    from sklearn.manifold import TSNE

    t0 = time.perf_counter()
    z = TSNE(2, init="pca", random_state=0, n_jobs=cores).fit_transform(x)
    print(f"scikit-learn TSNE: {time.perf_counter() - t0:.1f} s (1-NN on the map {knn1(z, y):.3f})")
    try:
        from openTSNE import TSNE as OpenTSNE
    except ImportError:
        print("openTSNE: not installed (pip install openTSNE)")
        return
    t0 = time.perf_counter()
    z = np.asarray(OpenTSNE(2, n_jobs=cores, random_state=0).fit(x))
    print(f"openTSNE:          {time.perf_counter() - t0:.1f} s (1-NN on the map {knn1(z, y):.3f})")


if __name__ == "__main__":
    main()
