"""Tests for federated.metrics: confusion matrix and macro metrics."""

import numpy as np
import pytest
from sklearn import metrics as sk

from federated import ClassificationMetrics, NumericsError, classification_metrics, confusion_matrix


def test_confusion_matrix_counts_true_rows_pred_columns() -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    assert cm.dtype == np.int64


def test_hand_computed_metrics() -> None:
    # Prepare: class 0: tp 1, fp 1, fn 1; class 1: tp 1, fp 1, fn 0; class 2: tp 1, fp 0, fn 1.
    y_true = np.array([0, 0, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 2, 0])
    # Execute
    m = classification_metrics(y_true, y_pred, 3)
    # Assert
    precision = [1 / 2, 1 / 2, 1.0]
    recall = [1 / 2, 1.0, 1 / 2]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall, strict=True)]
    assert m.accuracy == pytest.approx(3 / 5)
    assert m.precision == pytest.approx(np.mean(precision))
    assert m.recall == pytest.approx(np.mean(recall))
    assert m.f1 == pytest.approx(np.mean(f1))


def test_absent_classes_are_excluded_and_zero_division_is_zero() -> None:
    # Prepare: 10 classes declared; only 0, 1 and 3 occur; class 3 is predicted but never true.
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 3, 1, 1])
    # Execute
    m = classification_metrics(y_true, y_pred, 10)
    # Assert: over classes {0, 1, 3}; class 3 has precision 0 and recall 0/0 -> 0.
    assert m.precision == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert m.recall == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m.f1 == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert m.accuracy == pytest.approx(0.75)


def test_perfect_and_empty() -> None:
    perfect = classification_metrics(np.arange(4), np.arange(4), 4)
    assert perfect == ClassificationMetrics(accuracy=1.0, precision=1.0, recall=1.0, f1=1.0)
    empty = classification_metrics(np.zeros(0, dtype=int), np.zeros(0, dtype=int), 3)
    assert empty.as_dict() == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_matches_sklearn_on_random_labels() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        # Prepare: skewed labels so some classes are missing from one side or both.
        y_true = rng.choice(8, size=50, p=[0.4, 0.2, 0.2, 0.1, 0.1, 0, 0, 0])
        y_pred = np.where(rng.random(50) < 0.6, y_true, rng.integers(0, 7, size=50))
        # Execute
        m = classification_metrics(y_true, y_pred, 8)
        # Assert
        kw = {"average": "macro", "zero_division": 0}
        assert m.accuracy == pytest.approx(sk.accuracy_score(y_true, y_pred))
        assert m.precision == pytest.approx(sk.precision_score(y_true, y_pred, **kw))
        assert m.recall == pytest.approx(sk.recall_score(y_true, y_pred, **kw))
        assert m.f1 == pytest.approx(sk.f1_score(y_true, y_pred, **kw))
        np.testing.assert_array_equal(
            confusion_matrix(y_true, y_pred, 8),
            sk.confusion_matrix(y_true, y_pred, labels=range(8)),
        )


def test_rejects_bad_labels() -> None:
    with pytest.raises(NumericsError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(NumericsError):
        confusion_matrix(np.array([0, -1]), np.array([0, 1]), 3)
    with pytest.raises(NumericsError):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)
