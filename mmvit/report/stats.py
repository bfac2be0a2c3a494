"""Mean ± std over seeds, and whether an arm differs from the baseline beyond seed noise.

Seeds are paired across arms (seed 3 of every arm starts from the same initialisation and data
order), so the fair test of "arm vs. baseline" is a paired t-test over the seeds both have
finished. One test per non-baseline arm and metric; Holm's step-down correction across the
arms of one metric keeps the family-wise error at α. With fewer than ``MIN_PAIRS`` paired
seeds there is no test at all — a marker from two seeds would be noise dressed as evidence.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
from scipy import stats as scipy_stats

ALPHA = 0.05
MIN_PAIRS = 3


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
    """A paired t-test of one arm against the baseline on one metric; ``p_holm`` is None when
    there were fewer than ``MIN_PAIRS`` paired seeds (no test)."""

    pairs: int
    mean_difference: float
    t: float
    p: float | None
    p_holm: float | None

    @property
    def tested(self) -> bool:
        return self.p_holm is not None

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm <= ALPHA


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


def _ttest(differences: np.ndarray, arm: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    """(t, p) of scipy's paired t-test. Identical runs (all differences 0) give p = 1: no evidence."""
    if np.all(differences == 0):
        return 0.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant non-zero differences: t = ±inf, p = 0
        result = scipy_stats.ttest_rel(arm, base)
    return float(result.statistic), float(result.pvalue)


def paired_tests(baseline: Mapping[int, float], arms: Mapping[str, Mapping[int, float]]) -> dict[str, PairedTest]:
    """Per arm: the paired test of its per-seed values against the baseline's (same seeds),
    Holm-corrected across the arms that had at least ``MIN_PAIRS`` pairs."""
    raw: dict[str, tuple[int, float, float, float | None]] = {}
    for name, values in arms.items():
        seeds = sorted(s for s in values if s in baseline
                       and math.isfinite(values[s]) and math.isfinite(baseline[s]))
        arm = np.array([values[s] for s in seeds], dtype=np.float64)
        base = np.array([baseline[s] for s in seeds], dtype=np.float64)
        differences = arm - base
        mean = float(differences.mean()) if seeds else math.nan
        if len(seeds) < MIN_PAIRS:
            raw[name] = (len(seeds), mean, math.nan, None)
        else:
            t, p = _ttest(differences, arm, base)
            raw[name] = (len(seeds), mean, t, p)
    tested = [name for name, r in raw.items() if r[3] is not None]
    adjusted = dict(zip(tested, holm([raw[n][3] for n in tested])))
    return {name: PairedTest(r[0], r[1], r[2], r[3], adjusted.get(name)) for name, r in raw.items()}
