"""Where a study stands: trials by state, what is missing, compute spent, dates.

A live report is read while the study runs and after it failed half-way; it has to say plainly
which numbers are still missing and why, rather than show a quietly shorter table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from mmvit.report.analysis import ArmResult
from mmvit.report.records import StudyRecord, TrialRecord

STATES = ("COMPLETE", "RUNNING", "PRUNED", "FAIL")


@dataclass
class Overview:
    final_states: dict[str, int]
    search_states: dict[str, int]
    hours_final: dict[str, float]
    hours_search: dict[str, float]
    first_start: datetime | None
    last_complete: datetime | None
    missing: list[str]
    """One line per arm with fewer complete seeds than planned."""

    @property
    def hours_total(self) -> float:
        return sum(self.hours_final.values()) + sum(self.hours_search.values())


def _states(trials: list[TrialRecord]) -> dict[str, int]:
    counts = Counter(t.state for t in trials)
    return {s: counts.get(s, 0) for s in STATES} | {s: c for s, c in counts.items() if s not in STATES}


def _hours(trials: list[TrialRecord]) -> dict[str, float]:
    out: dict[str, float] = dict.fromkeys(STATES, 0.0)
    for t in trials:
        out[t.state] = out.get(t.state, 0.0) + t.hours
    return out


def arm_missing_line(result: ArmResult) -> str | None:
    """``arm X: 1 of 3 seeds complete, 1 running, 1 failed (seed 2 failed (OOM); …)``."""
    if result.n >= len(result.planned):
        return None
    kinds = Counter(m.kind for m in result.missing)
    summary = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    details = "; ".join(str(m) for m in result.missing)
    return f"{result.arm.name}: {result.n} of {len(result.planned)} seeds complete, {summary} ({details})"


def overview(record: StudyRecord, results: dict[str, ArmResult]) -> Overview:
    search = [t for s in record.search for t in s.trials]
    everything = record.all_trials()
    starts = [t.started for t in everything if t.started]
    ends = [t.completed for t in everything if t.completed]
    missing = [line for r in results.values() if (line := arm_missing_line(r))]
    return Overview(_states(record.trials), _states(search), _hours(record.trials), _hours(search),
                    min(starts) if starts else None, max(ends) if ends else None, missing)
