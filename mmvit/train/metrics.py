"""Multi-label metrics of thesis §6.2: AP micro/macro, F2, Hamming loss, class-wise AP.

Computed with numpy (no scikit-learn at run time); the tests check every number against
scikit-learn. The keys are the names a study file uses for ``metric:`` (:mod:`mmvit.metric_names`).

Classes without a positive sample in the evaluated split have no precision-recall curve: their
AP is NaN in ``ap_per_class`` and they are left out of ``ap_macro`` (and of the macro
precision/recall), which average over the classes that occur. Precision of a class that was
never predicted is 0 (scikit-learn's ``zero_division=0``).
"""

from __future__ import annotations

import numpy as np


def average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """AP = Σ (Rₙ − Rₙ₋₁)·Pₙ over distinct score thresholds (thesis Eq. 6.6; scikit-learn's
    definition, ties at one threshold counted together). NaN without positives."""
    targets = np.asarray(targets).ravel().astype(bool)
    scores = np.asarray(scores).ravel()
    positives = targets.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, targets = scores[order], targets[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(scores)), targets.size - 1]
    true_pos = np.cumsum(targets)[last_of_threshold]
    precision = true_pos / (last_of_threshold + 1)
    recall = true_pos / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64),
                     where=denominator > 0)


def _f_beta(precision: np.ndarray, recall: np.ndarray, beta: float) -> np.ndarray:
    return _safe_ratio((1 + beta**2) * precision * recall, beta**2 * precision + recall)


def compute_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict:
    """All metrics from sigmoid ``scores`` and multi-hot ``targets``, both (N, classes)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0.5
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores and targets must both be (N, classes), got {scores.shape} and {targets.shape}")
    predicted = scores >= threshold
    true_pos = (predicted & targets).sum(axis=0).astype(np.float64)
    pred_pos = predicted.sum(axis=0).astype(np.float64)
    real_pos = targets.sum(axis=0).astype(np.float64)
    present = real_pos > 0

    precision_micro = _safe_ratio(true_pos.sum(), pred_pos.sum())
    recall_micro = _safe_ratio(true_pos.sum(), real_pos.sum())
    precision_class = _safe_ratio(true_pos, pred_pos)
    recall_class = _safe_ratio(true_pos, real_pos)
    ap_per_class = [average_precision(targets[:, c], scores[:, c]) for c in range(scores.shape[1])]
    return {
        "ap_micro": average_precision(targets, scores),
        "ap_macro": float(np.nanmean(ap_per_class)) if present.any() else float("nan"),
        "f2": float(_f_beta(precision_micro, recall_micro, 2.0)),
        "f2_macro": float(_f_beta(precision_class, recall_class, 2.0)[present].mean()) if present.any() else float("nan"),
        "hamming_loss": float(np.mean(predicted != targets)),
        "precision_micro": float(precision_micro),
        "recall_micro": float(recall_micro),
        "precision_macro": float(precision_class[present].mean()) if present.any() else float("nan"),
        "recall_macro": float(recall_class[present].mean()) if present.any() else float("nan"),
        "ap_per_class": ap_per_class,
    }
