"""ssl-transfer's L-BFGS logistic-regression sweep over 45 weight decays, and its solvers.

The sweep (``linear.py``'s ``LinearTester``): one classifier with ``warm_start=True`` is fit
for each wd of ``torch.logspace(-6, 5, 45)`` in ascending order with C = 1 / wd, each fit
starting where the previous one ended (for VOC2007, the 20 per-class fits of one C follow
each other too); a wd replaces the best only if its val score is strictly higher than the
best so far (which starts at 0); then the same classifier, warm from the sweep's last fit,
is refit on trainval with the best C and scored on test.

Solvers (``solver``):

- ``sklearn`` (default, the reference): scikit-learn's ``LogisticRegression(solver="lbfgs")``
  with its defaults (max_iter 100, tol 1e-4, L2, intercept). ssl-transfer ran a version
  with ``multi_class="multinomial"``, removed since; with ``legacy=True`` (default) the old
  behaviour is reproduced: a binary problem (VOC's per-class fits) was a 2-way softmax at C,
  whose optimum is today's binomial fit at 2C (decision scores halved, which no AP sees);
  and the old loss was a sum over samples where today's is a mean, so the old stopping
  rule |grad|_inf <= tol is today's tol / n (/ 2n for the 2-way softmax's two rows).
- ``torch``: the same objective minimised by PyTorch's L-BFGS (strong-Wolfe line search,
  history 10, as scipy's L-BFGS-B), on CPU or GPU, warm-started the same way.

Both fit in ``dtype`` (default float64): scikit-learn 0.24, which ssl-transfer ran, cast the
features to float64 for its L-BFGS solver; today's keeps float32 features in float32, and on
nearly separable features the two select different C values. ``features_dtype float32``
fits the float32 features as they are (both solvers).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from transfer.recognition.metrics import accuracy, mean_ap11, mean_per_class_accuracy


def wd_grid(n: int = 45, lo: float = -6.0, hi: float = 5.0) -> list[float]:
    """ssl-transfer's weight decays: ``torch.logspace(lo, hi, n)`` (float32), as floats."""
    import torch

    return [float(w) for w in torch.logspace(lo, hi, n)]


class SklearnSolver:
    """scikit-learn's L-BFGS logistic regression with a warm start across fits."""

    def __init__(
        self, max_iter: int = 100, tol: float = 1e-4, legacy: bool = True, dtype: str = "float64"
    ):
        from sklearn.linear_model import LogisticRegression

        self.max_iter, self.tol, self.legacy = max_iter, tol, legacy
        self.dtype = np.dtype(dtype)
        self.clf = LogisticRegression(solver="lbfgs", warm_start=True, max_iter=max_iter, tol=tol)
        self._cache: dict = {}

    def _cast(self, X: np.ndarray) -> np.ndarray:
        """X in the solver's dtype, cast once per array (a sweep fits the same X 45 times)."""
        if X.dtype == self.dtype:
            return X
        key = (id(X), X.shape)
        if key not in self._cache:
            self._cache = {key: X.astype(self.dtype)}
        return self._cache[key]

    def fit(self, X: np.ndarray, y: np.ndarray, C: float) -> None:
        """X (N, D) float, y (N,) ints."""
        from sklearn.exceptions import ConvergenceWarning

        binary = len(np.unique(y)) == 2
        C_fit, tol = C, self.tol
        if self.legacy:
            C_fit = 2.0 * C if binary else C
            tol = self.tol / (len(y) * (2 if binary else 1))
        self.clf.set_params(C=C_fit, tol=tol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # as ssl-transfer: 100 its
            self.clf.fit(self._cast(X), y)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.clf.predict(self._cast(X))

    def decision(self, X: np.ndarray) -> np.ndarray:
        return self.clf.decision_function(self._cast(X))

    def state(self) -> dict:
        if not hasattr(self.clf, "coef_"):
            return {}
        return {"coef": self.clf.coef_, "intercept": self.clf.intercept_,
                "classes": self.clf.classes_}  # fmt: skip

    def load_state(self, state: dict) -> None:
        if state:
            self.clf.coef_ = np.asarray(state["coef"])
            self.clf.intercept_ = np.asarray(state["intercept"])
            self.clf.classes_ = np.asarray(state["classes"])


class TorchSolver:
    """The same objective (mean log loss + ||W||^2 / (2 C n), intercept unpenalised) by
    ``torch.optim.LBFGS``; binary problems as one logit at 2C (``legacy``), like sklearn's."""

    def __init__(
        self,
        max_iter: int = 100,
        tol: float = 1e-4,
        legacy: bool = True,
        device: str = "cpu",
        dtype: str = "float64",
    ):
        import torch

        self.max_iter, self.tol, self.legacy, self.device = max_iter, tol, legacy, device
        self.dtype = getattr(torch, dtype)
        self.W = None  # (K, D + 1): weights and intercept; K = 1 for a binary problem
        self.classes = None
        self._cache: dict = {}

    def _tensor(self, X: np.ndarray):
        import torch

        key = (id(X), X.shape)
        if key not in self._cache:
            self._cache = {key: torch.as_tensor(X, dtype=self.dtype, device=self.device)}
        return self._cache[key]

    def fit(self, X: np.ndarray, y: np.ndarray, C: float) -> None:
        import torch
        import torch.nn.functional as F

        classes, target = np.unique(y, return_inverse=True)
        binary = len(classes) == 2
        k = 1 if binary else len(classes)
        C_fit = 2.0 * C if (binary and self.legacy) else C
        Xt = self._tensor(X)
        t = torch.as_tensor(target, device=self.device)
        n, d = Xt.shape
        if self.W is None or self.W.shape != (k, d + 1):
            self.W = torch.zeros(k, d + 1, dtype=self.dtype, device=self.device)
        W = self.W.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([W], lr=1, max_iter=self.max_iter, history_size=10,
                                tolerance_grad=self.tol / (n * (2 if binary else 1)),
                                tolerance_change=1e-12, line_search_fn="strong_wolfe")  # fmt: skip
        reg = 0.5 / (C_fit * n)

        def closure():
            opt.zero_grad()
            logits = Xt @ W[:, :d].T + W[:, d]
            if binary:
                loss = F.binary_cross_entropy_with_logits(logits[:, 0], t.to(self.dtype))
            else:
                loss = F.cross_entropy(logits, t)
            loss = loss + reg * (W[:, :d] ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.W, self.classes = W.detach(), classes

    def decision(self, X: np.ndarray) -> np.ndarray:
        d = self.W.shape[1] - 1
        Xt = self._tensor(X)
        s = (Xt @ self.W[:, :d].T + self.W[:, d]).cpu().numpy()
        return s[:, 0] if s.shape[1] == 1 else s

    def predict(self, X: np.ndarray) -> np.ndarray:
        s = self.decision(X)
        idx = (s > 0).astype(np.int64) if s.ndim == 1 else s.argmax(1)
        return self.classes[idx]

    def state(self) -> dict:
        if self.W is None:
            return {}
        return {"W": self.W.cpu().numpy(), "classes": self.classes}

    def load_state(self, state: dict) -> None:
        import torch

        if state:
            self.W = torch.as_tensor(state["W"], dtype=self.dtype, device=self.device)
            self.classes = np.asarray(state["classes"])


def make_solver(
    name: str, max_iter: int, tol: float, legacy: bool, device: str = "cpu", dtype="float64"
):
    """The solver ``name`` (sklearn | torch) fitting in ``dtype`` (float64 | float32)."""
    if name == "sklearn":
        return SklearnSolver(max_iter, tol, legacy, dtype)
    if name == "torch":
        return TorchSolver(max_iter, tol, legacy, device, dtype)
    raise ValueError(f"unknown solver {name!r}")


def fit_and_score(solver, C: float, train: tuple, test: tuple, metric: str,
                  absent_class_nan: bool = True) -> float:  # fmt: skip
    """Fit ``solver`` on ``train`` (X, y) at C and score it on ``test``, percent. VOC-style
    multi-label y (N, K): K binary fits one after another, 11-point mAP of the decisions."""
    X, y = train
    Xt, yt = test
    if metric == "map11":
        scores = np.zeros(yt.shape, np.float64)
        for c in range(y.shape[1]):
            solver.fit(X, y[:, c], C)
            scores[:, c] = solver.decision(Xt)
        return mean_ap11(yt, scores)
    solver.fit(X, y, C)
    pred = solver.predict(Xt)
    if metric == "accuracy":
        return accuracy(yt, pred)
    return mean_per_class_accuracy(yt, pred, absent_class_nan)


@dataclass
class SweepState:
    """Where a sweep stands: the val score of each wd done, the best so far, the solver's
    warm-start state (saved after each fit, so an interrupted sweep resumes exactly)."""

    scores: list = field(default_factory=list)
    best_score: float = 0.0
    best_C: float | None = None
    solver: dict = field(default_factory=dict)


class NoCSelected(ValueError):
    """No weight decay scored above 0 on val (ssl-transfer would fail with a KeyError)."""


def sweep(
    solver,
    grid: list[float],
    train: tuple,
    val: tuple,
    metric: str,
    absent_class_nan: bool = True,
    state: SweepState | None = None,
    after_fit: Callable[[SweepState], None] | None = None,
) -> SweepState:
    """Fit each C = 1 / wd of ``grid`` in order (resuming ``state``); the best val score
    wins only when strictly higher. ``after_fit(state)`` is called after each fit (save
    the state, update a bar, poll a stop flag)."""
    state = state or SweepState()
    solver.load_state(state.solver)
    for wd in grid[len(state.scores) :]:
        C = 1.0 / wd
        score = fit_and_score(solver, C, train, val, metric, absent_class_nan)
        state.scores.append(score)
        if score > state.best_score:  # strict: a tie keeps the earlier (smaller) wd
            state.best_score, state.best_C = score, C
        state.solver = solver.state()
        if after_fit is not None:
            after_fit(state)
    if state.best_C is None:
        hint = "the features or labels carry no signal (check the data and the weights)"
        if all(np.isnan(state.scores)):
            hint = ("a class predicted on val has no val sample, so ssl-transfer's per-class "
                    "mean is NaN: pass absent_class_nan false")  # fmt: skip
        raise NoCSelected(f"no weight decay scored above 0 on val (scores "
                          f"{state.scores[:3]}...); {hint}")  # fmt: skip
    return state
