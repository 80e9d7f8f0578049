"""Confusion matrix and macro-averaged classification metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from federated.errors import NumericsError, ShapeError

__all__ = ["ClassificationMetrics", "classification_metrics", "confusion_matrix"]


def _labels(values: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ShapeError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise NumericsError(f"{what} must lie in [0, {num_classes})")
    return arr.astype(np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Return counts[true, pred] as an int64 (num_classes, num_classes) matrix."""
    if num_classes < 1:
        raise NumericsError(f"num_classes must be positive, got {num_classes}")
    t = _labels(y_true, num_classes, "y_true")
    p = _labels(y_pred, num_classes, "y_pred")
    if t.shape != p.shape:
        raise ShapeError(f"y_true {t.shape} and y_pred {p.shape} differ in length")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


@dataclass(frozen=True)
class ClassificationMetrics:
    """Accuracy and macro precision/recall/F1 over the classes that occur."""

    accuracy: float
    precision: float
    recall: float
    f1: float

    def as_dict(self) -> dict[str, float]:
        """Return the metrics as a plain name -> value dict."""
        return asdict(self)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
) -> ClassificationMetrics:
    """Compute accuracy and macro precision/recall/F1 from integer labels.

    Classes absent from both y_true and y_pred are left out of the macro averages; a zero
    division counts as 0 (as sklearn's ``zero_division=0``).
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    total = int(cm.sum())
    if total == 0:
        return ClassificationMetrics(accuracy=0.0, precision=0.0, recall=0.0, f1=0.0)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    present = (predicted + actual) > 0
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, actual)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return ClassificationMetrics(
        accuracy=float(tp.sum() / total),
        precision=float(precision[present].mean()),
        recall=float(recall[present].mean()),
        f1=float(f1[present].mean()),
    )
