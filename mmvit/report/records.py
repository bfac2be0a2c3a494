"""A study as plain records, read from Optuna storage and nothing else.

The report must work on a laptop far from the cluster that ran the study, from a SQLite file
or a database URL alone, so this module reads only what the runner wrote into Optuna storage
(study and trial user attributes) and never imports torch, Ray or the training code. Every
trial is fetched once (``get_trials(deepcopy=False)``): a 500-trial study costs one query
per table, not one per trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mmvit.errors import StudyError
from mmvit.metric_names import AGGREGATE, DISPLAY_NAMES, LOWER_IS_BETTER  # noqa: F401  (the report's readers take them from here)
from mmvit.record_schema import StoredArm, StoredSearchStudy, StoredStudy, StoredTrial
from mmvit.storage.connection import open_storage, redact

if TYPE_CHECKING:
    import pandas as pd

METRICS = AGGREGATE  # the report's names for the one table in mmvit.metric_names
METRIC_NAMES = DISPLAY_NAMES


def as_float(value: Any) -> float:
    """A stored number as float; JSON null (how the runner writes NaN) and junk become NaN."""
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class ArmRecord:
    """One ablation point as the runner recorded it: ``labels`` (axis → value) name it in tables;
    its Δ is against ``compare_with`` (None: no Δ), which differs from it in ``axis`` only (None
    for an arm list, or a study recorded before comparisons were per axis)."""

    index: int
    name: str
    labels: dict[str, Any]
    baseline: bool = False
    compare_with: str | None = None
    axis: str | None = None


@dataclass
class TrialRecord:
    """One Optuna trial, main (``phase="final"``) or search, with what the report uses of it."""

    number: int
    phase: str
    state: str
    arm: str | None
    seed: int | None
    value: float | None
    test: dict[str, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    ap_per_class_test: list[float] | None = None
    class_counts: list[int] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    intermediate: dict[int, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    parameters: float | None = None
    samples_per_s: float | None = None
    peak_memory_mb: float | None = None
    seconds: float = 0.0
    error: str | None = None
    pruned_at_epoch: int | None = None
    started: datetime | None = None
    completed: datetime | None = None
    checkpoint_bytes: int | None = None
    """What the finished trial keeps on disk (final trials; None before studies recorded it)."""

    @property
    def hours(self) -> float:
        return self.seconds / 3600.0

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE"

    def curve(self, metric: str) -> tuple[list[int], list[float]]:
        """Validation ``metric`` per finished epoch: the history, else Optuna's intermediate values."""
        if self.history:
            points = [(int(h["epoch"]), as_float(h.get(metric))) for h in self.history if "epoch" in h]
        else:
            points = sorted((int(k), as_float(v)) for k, v in self.intermediate.items())
        return [p[0] for p in points], [p[1] for p in points]


@dataclass
class SearchRecord:
    """One arm's search study; ``frozen`` are lightweight copies for Optuna's plotting functions."""

    name: str
    arm: str
    direction: str
    trials: list[TrialRecord]
    frozen: list[FrozenTrial]


@dataclass
class StudyRecord:
    """Everything the report shows, loaded once."""

    name: str
    storage: str
    direction: str
    spec: dict[str, Any]
    spec_hash: str | None
    archive: str | None
    archive_presence: dict[str, list[int]] | None
    """``{split: [present, listed]}``: how many of each split's patches the archive held."""
    profile: str | None
    environment: dict[str, Any]
    class_names: list[str]
    reference: dict[str, Any] | None
    arms: list[ArmRecord]
    baseline: ArmRecord | None
    baseline_assumed: bool
    trials: list[TrialRecord]
    search: list[SearchRecord]
    loaded_at: datetime
    notes: list[str] = field(default_factory=list)
    per_axis: bool = True
    """False for a study recorded before per-axis comparisons: every Δ is against ``baseline``."""
    planned_seeds: list[int] | None = None
    """The seeds the run's profile trains (the quick profile may keep fewer than the file lists)."""
    checkpoint_disk: dict[str, Any] | None = None
    """What the checkpoints held when a run last measured them (``path``, ``bytes``, ``folders``,
    ``measured``); None for studies run before it was recorded."""

    @property
    def metric(self) -> str:
        return str(self.spec.get("metric") or "ap_macro")

    @property
    def multi_axis(self) -> bool:
        """A product of two or more axes: the ablation where one global baseline mixes axes."""
        ablate = self.spec.get("ablate")
        return isinstance(ablate, dict) and len(ablate) > 1

    @property
    def file_seeds(self) -> list[int]:
        """The seeds the study file lists."""
        return [int(s) for s in self.spec.get("seeds") or []]

    @property
    def seeds(self) -> list[int]:
        """The seeds planned for every arm: the profile's, where the study recorded them."""
        return list(self.planned_seeds) if self.planned_seeds is not None else self.file_seeds

    @property
    def description(self) -> str:
        return str(self.spec.get("description") or "")

    def arm_trials(self, arm: str) -> list[TrialRecord]:
        return [t for t in self.trials if t.arm == arm]

    def complete_by_seed(self, arm: str) -> dict[int, TrialRecord]:
        """The COMPLETE trial of each seed of ``arm`` (the latest when a point ran twice)."""
        out: dict[int, TrialRecord] = {}
        for trial in sorted(self.arm_trials(arm), key=lambda t: t.number):
            if trial.complete and trial.seed is not None:
                out[trial.seed] = trial
        return out

    def all_trials(self) -> list[TrialRecord]:
        return self.trials + [t for s in self.search for t in s.trials]

    def frame(self) -> pd.DataFrame:
        """One row per main-study trial (pandas): the raw numbers behind every table."""
        import pandas as pd

        rows = []
        for t in self.trials:
            row = {"trial": t.number, "arm": t.arm, "seed": t.seed, "state": t.state,
                   f"validation_{self.metric}": t.value}
            row.update({f"test_{m}": t.test.get(m) for m in METRICS})
            row.update({"best_epoch": t.best_epoch, "parameters": t.parameters,
                        "samples_per_s": t.samples_per_s, "peak_memory_mb": t.peak_memory_mb,
                        "trial_hours": t.hours, "error": t.error})
            rows.append(row)
        return pd.DataFrame(rows)


def check_sqlite_exists(url: str) -> None:
    """Opening a missing SQLite file would create an empty database: refuse instead."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StudyError(f"The storage URL {redact(url)} cannot be parsed. Give an SQLAlchemy URL such as "
                         "sqlite:///studies/<study>/optuna.db or postgresql://user@host/db.") from None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    if not Path(parsed.database).is_file():
        raise StudyError(f"The study storage {redact(url)} does not exist ({parsed.database} is not a file). "
                         "Check the path, pass the storage the study was run with (--storage URL), or run "
                         "the study first with `mmvit-study run`.")


def _seconds(trial: FrozenTrial, wall_s: Any, now: datetime) -> float:
    """Compute a trial used: its recorded wall time, else start → end (or → now while it runs)."""
    if wall_s is not None and math.isfinite(as_float(wall_s)):
        return float(wall_s)
    if trial.datetime_start is None:
        return 0.0
    end = trial.datetime_complete or (now if trial.state == TrialState.RUNNING else None)
    return max(0.0, (end - trial.datetime_start).total_seconds()) if end else 0.0


def _optional_float(value: Any) -> float | None:
    number = as_float(value)
    return None if math.isnan(number) else number


def trial_record(trial: FrozenTrial, now: datetime, *, phase: str | None = None) -> TrialRecord:
    stored = StoredTrial.from_trial(trial)
    per_class, counts = stored.ap_per_class_test, stored.class_counts
    return TrialRecord(
        number=trial.number, phase=phase or stored.phase or "final", state=trial.state.name,
        arm=stored.arm, seed=int(stored.seed) if stored.seed is not None else None,
        value=_optional_float(trial.value) if trial.values is not None else None,
        test={k: as_float(v) for k, v in (stored.test or {}).items()},
        validation={k: as_float(v) for k, v in (stored.validation or {}).items()},
        ap_per_class_test=[as_float(v) for v in per_class] if per_class is not None else None,
        class_counts=[int(c) for c in counts] if counts is not None else None,
        history=list(stored.history or []), intermediate=dict(trial.intermediate_values),
        params=dict(trial.params) or dict(stored.search_params or {}),
        best_epoch=stored.best_epoch, parameters=_optional_float(stored.parameters),
        samples_per_s=_optional_float(stored.samples_per_s), peak_memory_mb=_optional_float(stored.peak_memory_mb),
        seconds=_seconds(trial, stored.wall_s, now), error=stored.error,
        pruned_at_epoch=int(stored.pruned_at_epoch) if stored.pruned_at_epoch is not None else None,
        started=trial.datetime_start, completed=trial.datetime_complete,
        checkpoint_bytes=int(stored.checkpoint_bytes) if stored.checkpoint_bytes is not None else None,
    )


def _arms(recorded: list[StoredArm], trials: list[TrialRecord], notes: list[str]) -> list[ArmRecord]:
    if not recorded:
        notes.append("The study records no arms (user attribute `arms`): `mmvit-study run` has not reached it yet, "
                     "or another tool created the study. Arms are taken from the trials.")
    arms = [ArmRecord(i, a.name, a.labels, a.baseline, a.compare_with, a.axis) for i, a in enumerate(recorded)]
    known = {a.name for a in arms}
    extra = sorted({t.arm for t in trials if t.arm is not None and t.arm not in known})
    if extra:
        if arms:
            notes.append("Trials of arms the study no longer lists are shown as extra arms: " + "; ".join(extra) + ".")
        arms += [ArmRecord(len(arms) + i, name, {}) for i, name in enumerate(extra)]
    return arms


def _comparisons(arms: list[ArmRecord], baseline: ArmRecord | None, per_axis: bool,
                 notes: list[str]) -> list[ArmRecord]:
    """Arms with what their Δ is against: as recorded, or — for a study recorded before
    comparisons were per axis (no ``compare_with``) — the one baseline, as reports were then."""
    known = {a.name for a in arms}
    if per_axis:
        lost = sorted({a.compare_with for a in arms if a.compare_with and a.compare_with not in known})
        if lost:
            notes.append("Comparison arms the study does not list: " + "; ".join(lost) + " (those arms get no Δ).")
        return [a if a.compare_with in known or a.compare_with is None else replace(a, compare_with=None, axis=None)
                for a in arms]
    if arms:
        notes.append("This study was recorded before comparisons were per axis: every Δ is against one baseline "
                     "arm, across axes. Run `mmvit-study run` on its file again to record per-axis comparisons.")
    return [replace(a, compare_with=None if baseline is None or a.name == baseline.name else baseline.name)
            for a in arms]


def _lite(trial: FrozenTrial) -> FrozenTrial:
    """The trial without its (large) user attributes, for Optuna's plots on an in-memory copy."""
    return optuna.trial.FrozenTrial(
        number=trial.number, state=trial.state, value=None, values=trial.values,
        datetime_start=trial.datetime_start, datetime_complete=trial.datetime_complete,
        params=trial.params, distributions=trial.distributions, user_attrs={}, system_attrs={},
        intermediate_values=trial.intermediate_values, trial_id=trial.number)  # an in-memory copy: any id


def _search(storage, names: list[str], existing: set[str], direction: str, now: datetime,
            notes: list[str]) -> list[SearchRecord]:
    out = []
    for name in names:
        if name not in existing:
            notes.append(f"The search study {name!r} is listed but not in storage yet (its search has not started).")
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        frozen = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
        arm = str(StoredSearchStudy.from_study(study).arm or name.rsplit("/search/", 1)[-1])
        records = [trial_record(t, now, phase="search") for t in frozen]
        for record in records:
            record.arm = record.arm or arm
        out.append(SearchRecord(name, arm, study.direction.name.lower(), records, [_lite(t) for t in frozen]))
    return out


def load_study_record(study_name: str, storage_url: str) -> StudyRecord:
    """The study ``study_name`` of ``storage_url`` with its trials and search studies."""
    check_sqlite_exists(storage_url)
    storage = open_storage(storage_url)
    names = set(optuna.get_all_study_names(storage))
    if study_name not in names:
        main = sorted(n for n in names if "/search/" not in n)
        held = f"it holds {', '.join(repr(n) for n in main)}" if main else "it holds no study"
        raise StudyError(f"The storage {redact(storage_url)} has no study {study_name!r} ({held}). Check the "
                         "study name (the `study:` field of its file), or pass the storage it was run with "
                         "(--storage URL).")
    study = optuna.load_study(study_name=study_name, storage=storage)
    now = datetime.now()
    recorded = StoredStudy.from_study(study)
    notes: list[str] = []
    trials = [trial_record(t, now) for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    trials = [t for t in trials if t.phase != "search"]
    arms = _arms(recorded.arms or [], trials, notes)
    per_axis = recorded.arms_compared
    baseline = next((a for a in arms if a.baseline), None)
    assumed = baseline is None and bool(arms)
    if assumed:
        baseline = arms[0]
    ablate = (recorded.spec or {}).get("ablate")
    mixed = bool(recorded.arms) and isinstance(ablate, dict) and len(ablate) > 1  # a note only where it mattered
    arms = _comparisons(arms, baseline, per_axis, notes if mixed else [])
    baseline = arms[baseline.index] if baseline is not None else None
    labels = recorded.labels
    if not labels:
        width = max((len(t.ap_per_class_test or []) for t in trials), default=0)
        labels = [f"class {i + 1}" for i in range(width)]
        if width:
            notes.append("The study records no class names (user attribute `labels`): classes are numbered.")
    direction = study.direction.name.lower()
    return StudyRecord(
        name=study_name, storage=redact(storage_url), direction=direction, spec=dict(recorded.spec or {}),
        spec_hash=recorded.spec_hash, archive=recorded.archive, profile=recorded.profile,
        archive_presence=recorded.archive_presence,
        environment=dict(recorded.environment or {}), class_names=[str(x) for x in labels],
        reference=recorded.reference or None, arms=arms, baseline=baseline, baseline_assumed=assumed,
        trials=trials, search=_search(storage, list(recorded.search_studies or []), names, direction, now, notes),
        loaded_at=now, notes=notes, per_axis=per_axis,
        planned_seeds=[int(x) for x in recorded.planned_seeds] if recorded.planned_seeds is not None else None,
        checkpoint_disk=dict(recorded.checkpoint_disk) if recorded.checkpoint_disk else None)
