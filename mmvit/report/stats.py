"""Mean ± std over seeds, and whether an arm differs from its comparison arm beyond seed noise.

Seeds are paired across arms (seed 3 of every arm starts from the same initialisation and data
order), so the fair test of "arm vs. its comparison arm" is a paired t-test over the seeds both
have finished. One test per compared arm and metric; Holm's step-down correction over the
comparisons of one table and metric (the family) keeps the family-wise error at α. With fewer
than ``MIN_PAIRS`` paired seeds there is no test at all — a marker from two seeds would be noise
dressed as evidence. Nor is there one when every paired difference is the same number (zero
variance): t would be ±inf and p = 0, a "certainty" that says only that the runs are
deterministic, so that outcome is reported as such and never marked significant.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

import numpy as np
from scipy import stats as scipy_stats

ALPHA = 0.05
MIN_PAIRS = 3
ZERO_SPREAD = 1e-12
"""Paired differences closer than this are equal: float rounding of metrics in [0, 1], not seeds."""


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1; NaN for n < 2) of the finite values."""

    mean: float
    std: float
    n: int

    @property
    def empty(self) -> bool:
        return self.n == 0


def summarize(values: Iterable[float]) -> Summary:
    array = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if array.size == 0:
        return Summary(math.nan, math.nan, 0)
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return Summary(float(array.mean()), std, int(array.size))


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of one arm against its comparison arm on one metric. ``p`` and ``p_holm``
    are None when there was no test: fewer than ``MIN_PAIRS`` paired seeds, or ``zero_variance``
    (all paired differences equal ``mean_difference``)."""

    pairs: int
    mean_difference: float
    t: float
    p: float | None
    p_holm: float | None
    zero_variance: bool = False

    @property
    def tested(self) -> bool:
        return self.p_holm is not None

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm <= ALPHA

    @property
    def outcome(self) -> str:
        """``tested``, ``too few pairs`` or ``zero variance`` (the CSV's wording)."""
        if self.pairs < MIN_PAIRS:
            return "too few pairs"
        return "zero variance" if self.zero_variance else "tested"

    def describe(self) -> str:
        """The outcome in words, with the numbers behind it."""
        if self.pairs < MIN_PAIRS:
            return f"{self.pairs} paired seed(s): fewer than {MIN_PAIRS}, no test"
        if self.zero_variance:
            value = f"{self.mean_difference:+.4g}" if self.mean_difference else "0 (identical runs)"
            return f"zero variance: all {self.pairs} differences equal {value}; no t-test"
        return (f"paired t-test over {self.pairs} seeds: t = {self.t:.3g}, p = {self.p:.3g}, "
                f"Holm p = {self.p_holm:.3g}")


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values: p₍ᵢ₎·(m−i+1), made monotone, capped at 1, in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def _ttest(arm: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    """(t, p) of scipy's two-sided paired t-test (the caller has ruled out zero variance)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision-loss warning on near-equal values
        result = scipy_stats.ttest_rel(arm, base)
    return float(result.statistic), float(result.pvalue)


def _one_test(values: Mapping[int, float], against: Mapping[int, float]) -> PairedTest:
    """The unadjusted test of ``values`` against ``against`` over the seeds both have (finite)."""
    seeds = sorted(s for s in values if s in against and math.isfinite(values[s]) and math.isfinite(against[s]))
    arm = np.array([values[s] for s in seeds], dtype=np.float64)
    base = np.array([against[s] for s in seeds], dtype=np.float64)
    differences = arm - base
    mean = float(differences.mean()) if seeds else math.nan
    if len(seeds) < MIN_PAIRS:
        return PairedTest(len(seeds), mean, math.nan, None, None)
    if float(np.ptp(differences)) <= ZERO_SPREAD:  # t = mean / 0: no t-test, whatever the mean
        return PairedTest(len(seeds), mean, math.nan, None, None, zero_variance=True)
    t, p = _ttest(arm, base)
    return PairedTest(len(seeds), mean, t, p, None)


def compared_tests(pairs: Mapping[str, tuple[Mapping[int, float], Mapping[int, float]]]) -> dict[str, PairedTest]:
    """Per arm: the paired test of its per-seed values (first) against its comparison arm's
    (second), Holm-corrected over the arms that got a t-test — the family is ``pairs``, so pass
    one table's comparisons of one metric."""
    raw = {name: _one_test(values, against) for name, (values, against) in pairs.items()}
    tested = [name for name, test in raw.items() if test.p is not None]
    adjusted = dict(zip(tested, holm([raw[n].p for n in tested])))
    return {name: replace(test, p_holm=adjusted.get(name)) for name, test in raw.items()}


def paired_tests(baseline: Mapping[int, float], arms: Mapping[str, Mapping[int, float]]) -> dict[str, PairedTest]:
    """Per arm: the paired test against one ``baseline``'s per-seed values, Holm over the arms."""
    return compared_tests({name: (values, baseline) for name, values in arms.items()})
