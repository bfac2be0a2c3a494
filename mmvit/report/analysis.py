"""Per-arm results computed once, so every table, figure and export shows the same numbers.

Test metrics are the ``test`` attribute of each COMPLETE final trial: the test split measured
once, at the epoch that was best on validation. An arm's number is the mean ± sample std over
its complete seeds; its Δ is the difference of means to its own comparison arm (the arm that
differs from it in one axis, at that axis's reference level: :func:`mmvit.study.arms.comparisons`,
recorded by the runner); its significance is the paired test of :mod:`mmvit.report.stats` over the
seeds both finished, Holm-corrected over the comparisons of one table and metric.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmvit.record_schema import INTERRUPTED
from mmvit.report.records import LOWER_IS_BETTER, METRICS, ArmRecord, StudyRecord, TrialRecord
from mmvit.report.stats import PairedTest, Summary, compared_tests, summarize


@dataclass(frozen=True)
class MissingSeed:
    """A planned seed without a COMPLETE trial: ``kind`` is running, failed, interrupted, pruned
    or not started; ``detail`` the recorded error."""

    seed: int
    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"seed {self.seed} {self.kind}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class ArmResult:
    arm: ArmRecord
    complete: dict[int, TrialRecord]
    planned: list[int]
    metrics: dict[str, Summary]
    per_class: list[float]
    parameters: Summary
    samples_per_s: Summary
    peak_memory_mb: Summary
    hours_complete: Summary
    hours_all: float
    missing: list[MissingSeed] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.complete)

    def seed_values(self, metric: str) -> dict[int, float]:
        return {seed: t.test.get(metric, math.nan) for seed, t in self.complete.items()}


def best_of(metric: str, values: list[float]) -> float:
    """The best finite value (NaN if none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan
    return min(finite) if metric in LOWER_IS_BETTER else max(finite)


def _missing(record: StudyRecord, arm: str, planned: list[int], complete: dict[int, TrialRecord]) -> list[MissingSeed]:
    latest: dict[int, TrialRecord] = {}
    for trial in sorted(record.arm_trials(arm), key=lambda t: t.number):
        if trial.seed is not None:
            latest[trial.seed] = trial
    out = []
    for seed in planned:
        if seed in complete:
            continue
        trial = latest.get(seed)
        if trial is None:
            out.append(MissingSeed(seed, "not started"))
        elif trial.state == "FAIL":
            lines = (trial.error or "").strip().splitlines()
            error = lines[0][:160] if lines else "no error recorded"
            out.append(MissingSeed(seed, "interrupted" if error.startswith(INTERRUPTED) else "failed", error))
        else:
            out.append(MissingSeed(seed, trial.state.lower()))
    return out


def arm_results(record: StudyRecord) -> dict[str, ArmResult]:
    """Every arm's result, in arm order."""
    results = {}
    width = len(record.class_names)
    for arm in record.arms:
        complete = record.complete_by_seed(arm.name)
        planned = list(record.seeds) + sorted(s for s in complete if s not in record.seeds)
        trials = list(complete.values())
        per_class = []
        if width:
            stacked = np.array([(list(t.ap_per_class_test or []) + [math.nan] * width)[:width] for t in trials],
                               dtype=np.float64).reshape(len(trials), width)
            for column in stacked.T:
                finite = column[np.isfinite(column)]
                per_class.append(float(finite.mean()) if finite.size else math.nan)
        results[arm.name] = ArmResult(
            arm=arm, complete=complete, planned=planned,
            metrics={m: summarize(t.test.get(m, math.nan) for t in trials) for m in METRICS},
            per_class=per_class,
            parameters=summarize(t.parameters for t in trials if t.parameters is not None),
            samples_per_s=summarize(t.samples_per_s for t in trials if t.samples_per_s is not None),
            peak_memory_mb=summarize(t.peak_memory_mb for t in trials if t.peak_memory_mb is not None),
            hours_complete=summarize(t.hours for t in trials),
            hours_all=sum(t.hours for t in record.arm_trials(arm.name)),
            missing=_missing(record, arm.name, planned, complete))
    return results


def comparison_pairs(record: StudyRecord) -> dict[str, str]:
    """arm → the arm its Δ is against, for every arm that has one (arm order)."""
    return {a.name: a.compare_with for a in record.arms if a.compare_with is not None}


def comparison_tests(results: dict[str, ArmResult], pairs: dict[str, str]) -> dict[str, dict[str, PairedTest]]:
    """metric → arm → paired test against ``pairs[arm]``. One call is one Holm family per metric:
    pass the comparisons one table shows."""
    pairs = {arm: other for arm, other in pairs.items() if arm in results and other in results}
    return {m: compared_tests({arm: (results[arm].seed_values(m), results[other].seed_values(m))
                               for arm, other in pairs.items()}) for m in METRICS}


def training_frequency(record: StudyRecord) -> list[int] | None:
    """Training-split positives per class, from any complete trial (they all share the split)."""
    for trial in record.trials:
        if trial.complete and trial.class_counts:
            return trial.class_counts
    return None


# ---------------------------------------------------------------------------- axes

def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def axes(arms: list[ArmRecord]) -> list[str]:
    """Label keys over all arms, in order of first appearance."""
    out: list[str] = []
    for arm in arms:
        out += [axis for axis in arm.labels if axis not in out]
    return out


def axis_values(arms: list[ArmRecord], axis: str) -> list[Any]:
    """The values of ``axis`` in order of first appearance (file order)."""
    seen: dict[str, Any] = {}
    for arm in arms:
        if axis in arm.labels:
            seen.setdefault(_key(arm.labels[axis]), arm.labels[axis])
    return list(seen.values())


def label_text(value: Any) -> str:
    """An axis value as the arm names write it (``model.depth=2``)."""
    return str(value)


def product_axes(arms: list[ArmRecord]) -> tuple[str, str] | None:
    """(row axis, column axis) when every arm has exactly the same two axes and the arms are their
    full product, each combination once. Rows get the inner (second listed) axis and column
    groups the outer one, so a Δ within a column group is along the rows, as each arm's own
    comparison is (the thesis files list the axis with fewer values first: Table 7.8's depth
    rows and fusion column groups)."""
    names = axes(arms)
    if len(names) != 2 or any(set(a.labels) != set(names) for a in arms):
        return None
    first, second = names
    combos = {(_key(a.labels[first]), _key(a.labels[second])) for a in arms}
    n1, n2 = len(axis_values(arms, first)), len(axis_values(arms, second))
    if len(combos) != len(arms) or len(arms) != n1 * n2 or n1 < 2 or n2 < 2:
        return None
    return second, first


def find_arm(arms: list[ArmRecord], labels: dict[str, Any]) -> ArmRecord | None:
    wanted = {k: _key(v) for k, v in labels.items()}
    for arm in arms:
        if all(_key(arm.labels.get(k)) == v for k, v in wanted.items()):
            return arm
    return None
