"""CTR metrics computed over a whole split (never averaged over batches).

Checked against scikit-learn in ``tests/test_metrics.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

# Whether a larger value is better, for epoch selection and comparisons.
HIGHER_IS_BETTER = {
    "auc": True,
    "acc": True,
    "f1": True,
    "loss": False,
    "mse": False,
    "mae": False,
    # link prediction (KG embeddings)
    "mrr": True,
    "mr": False,
    "hits1": True,
    "hits3": True,
    "hits10": True,
}


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic (ties count one half)."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative label")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))  # average ranks for ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels).astype(bool) == np.asarray(predicted).astype(bool)))


def f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of the positive class; 0 when there are no true positives."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    tp = np.sum(labels & predicted)
    denom = labels.sum() + predicted.sum()
    return float(2 * tp / denom) if tp else 0.0


def batch_mean_auc(labels: np.ndarray, scores: np.ndarray, batch_size: int) -> float:
    """The mean AUC of consecutive batches of ``batch_size`` pairs (MKGCN's public code).

    A batch whose pairs all have one label has no AUC and is left out of the mean.
    Nonstandard: it differs from the AUC over the whole split
    (``eval.auc = "batch_mean"`` reproduces it, labelled as such).
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    values = [
        roc_auc(labels[start : start + batch_size], scores[start : start + batch_size])
        for start in range(0, len(labels), batch_size)
        if 0 < labels[start : start + batch_size].sum() < len(labels[start : start + batch_size])
    ]
    return float(np.mean(values)) if values else float("nan")


def ctr_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float = 0.5,
    auc: str = "whole",
    batch_size: int = 4096,
) -> dict:
    """AUC, and ACC and F1 of ``probability >= threshold``, over all pairs.

    ``auc = "batch_mean"`` replaces the AUC over all pairs by :func:`batch_mean_auc`.
    """
    predicted = np.asarray(probabilities) >= threshold
    return {
        "auc": (
            roc_auc(labels, probabilities)
            if auc == "whole"
            else batch_mean_auc(labels, probabilities, batch_size)
        ),
        "acc": accuracy(labels, predicted),
        "f1": f1(labels, predicted),
    }


# Items with at most this many training positives form the cold slice.
COLD_MAX_POSITIVES = 2


def cold_items(train: torch.Tensor, n_items: int, max_positives: int = COLD_MAX_POSITIVES):
    """``[n_items]`` bool: the items with at most ``max_positives`` positives in ``train``."""
    positives = train[train[:, 2] == 1][:, 1]
    return torch.bincount(positives, minlength=n_items) <= max_positives


def cold_auc(pairs: torch.Tensor, scores: np.ndarray, cold: torch.Tensor) -> dict[str, float]:
    """AUC over the pairs whose item is cold, and how many pairs that is.

    ``cold_auc`` is NaN where the slice lacks a positive or a negative.
    """
    mask = cold[pairs[:, 1]].numpy()
    labels = pairs[:, 2].numpy()[mask]
    both = 0 < labels.sum() < len(labels)
    auc = roc_auc(labels, np.asarray(scores)[mask]) if both else float("nan")
    return {"cold_auc": auc, "cold_pairs": float(mask.sum())}


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict:
    """MSE and MAE over every edge of a split (never a mean of per-batch values)."""
    error = np.asarray(predictions, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    return {"mse": float(np.mean(error**2)), "mae": float(np.mean(np.abs(error)))}
