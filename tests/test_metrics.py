"""Metrics agree with scikit-learn, including ties and classes without positives."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from mmvit.train.metrics import compute_metrics


def _case(seed: int, n: int = 300, classes: int = 19, ties: bool = False):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, classes)) < rng.uniform(0.02, 0.5, classes)).astype(np.float32)
    scores = np.clip(0.35 * targets + rng.random((n, classes)) * 0.7, 0, 1)
    if ties:
        scores = np.round(scores, 1)
    return scores, targets


@pytest.mark.parametrize("seed, ties", [(0, False), (1, False), (2, True), (3, True)])
def test_matches_sklearn(seed, ties):
    scores, targets = _case(seed, ties=ties)
    got = compute_metrics(scores, targets)
    predicted = scores >= 0.5
    assert got["ap_micro"] == pytest.approx(skm.average_precision_score(targets, scores, average="micro"), abs=1e-12)
    assert got["ap_macro"] == pytest.approx(skm.average_precision_score(targets, scores, average="macro"), abs=1e-12)
    per_class = skm.average_precision_score(targets, scores, average=None)
    np.testing.assert_allclose(got["ap_per_class"], per_class, atol=1e-12)
    assert got["f2"] == pytest.approx(skm.fbeta_score(targets, predicted, beta=2, average="micro"), abs=1e-12)
    assert got["f2_macro"] == pytest.approx(skm.fbeta_score(targets, predicted, beta=2, average="macro", zero_division=0), abs=1e-12)
    assert got["hamming_loss"] == pytest.approx(skm.hamming_loss(targets, predicted), abs=1e-12)
    for avg in ("micro", "macro"):
        assert got[f"precision_{avg}"] == pytest.approx(skm.precision_score(targets, predicted, average=avg, zero_division=0), abs=1e-12)
        assert got[f"recall_{avg}"] == pytest.approx(skm.recall_score(targets, predicted, average=avg, zero_division=0), abs=1e-12)


def test_class_without_positives_is_nan_and_left_out_of_macro():
    scores, targets = _case(4)
    targets[:, 7] = 0
    got = compute_metrics(scores, targets)
    assert math.isnan(got["ap_per_class"][7])
    present = [c for c in range(19) if c != 7]
    expected = skm.average_precision_score(targets[:, present], scores[:, present], average="macro")
    assert got["ap_macro"] == pytest.approx(expected, abs=1e-12)
    assert got["recall_macro"] == pytest.approx(
        skm.recall_score(targets[:, present], scores[:, present] >= 0.5, average="macro", zero_division=0))


def test_perfect_and_inverted_scores():
    _, targets = _case(5)
    perfect = compute_metrics(targets.copy(), targets)
    assert perfect["ap_micro"] == 1.0 and perfect["ap_macro"] == 1.0
    assert perfect["f2"] == 1.0 and perfect["hamming_loss"] == 0.0
    inverted = compute_metrics(1.0 - targets, targets)
    assert inverted["hamming_loss"] == 1.0 and inverted["f2"] == 0.0


def test_threshold_moves_threshold_metrics_only():
    scores, targets = _case(6)
    low, high = compute_metrics(scores, targets, 0.3), compute_metrics(scores, targets, 0.7)
    assert low["ap_macro"] == high["ap_macro"]
    assert low["recall_micro"] > high["recall_micro"]
