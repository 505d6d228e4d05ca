"""The recognition metrics as ssl-transfer computes them (``linear.py``), in percent.

- ``accuracy``: the share of correct predictions.
- ``mean_per_class``: scikit-learn's confusion matrix over the labels present in the truth
  or the predictions, each row's diagonal over its sum, averaged. A class predicted but
  absent from the truth has an empty row, so the official mean is NaN (and a NaN never
  wins the validation sweep); ``absent_class_nan=False`` averages over the rows that have
  samples instead (docs/fidelity.md).
- ``map11``: per class, the PASCAL VOC 2007 11-point AP of the decision scores (precision
  from scikit-learn's ``precision_recall_curve``, the max precision at recall >= t for
  t in 0, 0.1, .., 1), averaged over classes.
"""

from __future__ import annotations

import warnings

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """y_true, y_pred (N,) ints -> percent correct."""
    return 100.0 * float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def mean_per_class_accuracy(
    y_true: np.ndarray, y_pred: np.ndarray, absent_class_nan: bool = True
) -> float:
    """y_true, y_pred (N,) ints -> the mean over classes of the per-class recall, percent."""
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred)
    rows = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = cm.diagonal() / rows
    if not absent_class_nan:
        per_class = per_class[rows > 0]
    return 100.0 * float(per_class.mean())


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """The 11-point interpolated AP of a precision / recall curve (fraction, not percent)."""
    ap = 0.0
    for t in np.linspace(0, 1, 11):
        above = recall >= t
        ap += (np.max(precision[above]) if above.any() else 0.0) / 11.0
    return float(ap)


def voc07_class_ap(y_true: np.ndarray, scores: np.ndarray) -> float:
    """y_true (N,) 0/1, scores (N,) -> the class's 11-point AP (fraction)."""
    from sklearn.metrics import precision_recall_curve

    with warnings.catch_warnings():  # a class with no positive: recall is NaN, AP from 0s
        warnings.simplefilter("ignore")
        precision, recall, _ = precision_recall_curve(y_true, scores)
    return voc07_ap(recall, precision)


def mean_ap11(y_true: np.ndarray, scores: np.ndarray) -> float:
    """y_true (N, C) 0/1, scores (N, C) -> mean 11-point AP over classes, percent."""
    return 100.0 * float(np.mean([voc07_class_ap(y_true[:, c], scores[:, c])
                                  for c in range(y_true.shape[1])]))  # fmt: skip


METRIC_NAMES = {"accuracy": "accuracy", "mean_per_class": "mean per-class accuracy",
                "map11": "11-point mAP"}  # fmt: skip
