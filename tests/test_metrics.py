"""dglrec.evaluation.metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from dglrec.evaluation.metrics import HIGHER_IS_BETTER, accuracy, ctr_metrics, f1, roc_auc

SEEDS = range(8)


def _tied_data(seed: int, n: int = 500, pos_rate: float = 0.4):
    """Labels and probabilities rounded to one decimal: lots of ties, some exactly at 0.5."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < pos_rate).astype(np.int64)
    # Informative but noisy scores, so AUC is neither 0.5 nor 1.
    scores = np.clip(0.3 * labels + rng.normal(0.35, 0.25, n), 0.0, 1.0).round(1)
    assert len(np.unique(scores)) <= 11  # the ties are really there
    return labels, scores


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_auc_matches_sklearn_with_ties(seed):
    labels, scores = _tied_data(seed)
    expected = roc_auc_score(labels, scores)
    assert 0.55 < expected < 0.99
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)
    # Inputs of other dtypes: bool labels, float32 scores, plain lists.
    assert roc_auc(labels.astype(bool), scores.astype(np.float32)) == pytest.approx(
        expected, abs=1e-6
    )
    assert roc_auc(labels.tolist(), scores.tolist()) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_auc_matches_sklearn_continuous_and_unbalanced(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(20, 300))
    labels = (rng.random(n) < 0.1).astype(int)
    labels[:2] = [0, 1]  # both classes present
    scores = rng.random(n) + 0.2 * labels
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_and_f1_match_sklearn(seed):
    labels, scores = _tied_data(seed)
    predicted = scores >= 0.5
    assert accuracy(labels, predicted) == pytest.approx(
        accuracy_score(labels, predicted), abs=1e-12
    )
    assert f1(labels, predicted) == pytest.approx(f1_score(labels, predicted), abs=1e-12)
    # Integer 0/1 predictions behave like booleans.
    assert f1(labels, predicted.astype(int)) == pytest.approx(
        f1_score(labels, predicted), abs=1e-12
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.7])
def test_ctr_metrics_match_sklearn(seed, threshold):
    labels, probabilities = _tied_data(seed)
    # Rounded scores sit exactly on the threshold: ctr_metrics uses ">= threshold".
    assert np.any(probabilities == threshold)
    predicted = probabilities >= threshold
    out = ctr_metrics(labels, probabilities, threshold=threshold)
    assert set(out) == {"auc", "acc", "f1"}
    assert out["auc"] == pytest.approx(roc_auc_score(labels, probabilities), abs=1e-12)
    assert out["acc"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-12)
    assert out["f1"] == pytest.approx(f1_score(labels, predicted), abs=1e-12)
    assert all(isinstance(v, float) for v in out.values())


def test_ctr_metrics_default_threshold_is_half():
    labels = np.array([1, 0, 1, 0])
    probabilities = np.array([0.5, 0.49, 0.2, 0.51])
    # predicted = [1, 0, 0, 1]: tp=1, tn=1, fp=1, fn=1.
    # AUC: only (0.5 > 0.49) of the four positive/negative pairs is ordered right.
    assert ctr_metrics(labels, probabilities) == pytest.approx({"auc": 0.25, "acc": 0.5, "f1": 0.5})


def test_roc_auc_hand_computed():
    # Positive/negative pairs: (0.9,0.8) ok, (0.9,0.1) ok, (0.3,0.8) wrong, (0.3,0.1) ok -> 3/4.
    assert roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1]) == pytest.approx(0.75)


def test_roc_auc_ties_count_one_half():
    # Pairs: (0.5,0.5) tie -> 1/2, (0.5,0.2) ok, (0.9,0.5) ok, (0.9,0.2) ok -> 3.5/4.
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.2]) == pytest.approx(0.875)
    assert roc_auc([1, 0, 1, 0], [0.4] * 4) == pytest.approx(0.5)


def test_roc_auc_extremes():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.0)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0], [True]])
def test_roc_auc_needs_both_classes(labels):
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_auc(labels, np.linspace(0, 1, len(labels)))


def test_f1_without_predicted_positives_is_zero():
    labels = np.array([1, 0, 1, 1])
    predicted = np.zeros(4, dtype=bool)
    assert f1(labels, predicted) == 0.0
    assert f1_score(labels, predicted, zero_division=0) == 0.0
    # No positives at all on either side: still 0, not NaN.
    assert f1(np.zeros(3), np.zeros(3)) == 0.0


def test_f1_and_accuracy_hand_computed():
    labels = [1, 1, 0, 0, 1]
    predicted = [1, 0, 1, 0, 1]
    # tp=2, fp=1, fn=1 -> F1 = 4/6; 3 of 5 correct.
    assert f1(labels, predicted) == pytest.approx(2 / 3)
    assert accuracy(labels, predicted) == pytest.approx(0.6)


def test_higher_is_better():
    assert HIGHER_IS_BETTER == {
        "auc": True,
        "acc": True,
        "f1": True,
        "loss": False,
        "mse": False,
        "mae": False,
        "mrr": True,
        "mr": False,
        "hits1": True,
        "hits3": True,
        "hits10": True,
    }


def test_regression_metrics_match_scikit_learn():
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    from dglrec.evaluation.metrics import regression_metrics

    rng = np.random.default_rng(0)
    targets, predictions = rng.random(1000), rng.random(1000)
    got = regression_metrics(targets, predictions)
    assert got["mse"] == pytest.approx(mean_squared_error(targets, predictions), rel=1e-12)
    assert got["mae"] == pytest.approx(mean_absolute_error(targets, predictions), rel=1e-12)
