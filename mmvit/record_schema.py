"""What a study keeps in Optuna storage: the one schema of its study and trial user attributes.

Optuna storage is the single source of truth of a study, and its user attributes are the
record: the runner and the trial processes write them; the report, the live view, ``status``,
the claims and resume read them; the report's test fixtures write them too. Every one of them
goes through the classes here, so a key renamed on one side cannot silently drift from the
other. Standard library only: the report imports this on a laptop without torch or Ray.

Versions. Each record stores ``schema`` (:data:`SCHEMA_VERSION`). Version 1 is the layout
below. Records without ``schema`` were written before the schema had a number (mmvit-study 0.1
until December 2026) and hold the same keys with the same meaning, so they read as version 1
(``tests/fixtures/legacy_study`` is such a study). A record of a newer version is refused with
a message that says to upgrade: a reader must not guess at keys it does not know. An optional
key added within a version (``checkpoint_bytes``, ``checkpoint_disk``) is absent from older records,
which read as before, and ignored by older readers: it needs no new number.

Writers record what they know when they know it (a trial's identity when it starts, its
history every epoch, its results at the end): every field is optional, and :meth:`to_attrs`
holds only the fields that are set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from mmvit.errors import StudyError

SCHEMA_VERSION = 1
"""The record layout this version writes and the newest it reads."""
SCHEMA_KEY = "schema"
INTERRUPTED = "interrupted"
"""The prefix of a trial's ``error`` when it did not fail on its own (its driver or worker
stopped): it is not a failure, and the point runs again."""


def _check_version(attrs: Mapping[str, Any], what: str) -> int:
    version = attrs.get(SCHEMA_KEY, 0)  # 0: written before the schema had a number; same keys as 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise StudyError(f"The {what} stores schema = {version!r}, which no mmvit-study writes. The storage was "
                         "edited by another tool: restore it from a backup, or run the study again under a new name.")
    if version > SCHEMA_VERSION:
        raise StudyError(f"The {what} was written by a newer mmvit-study (record schema {version}; this one reads "
                         f"up to {SCHEMA_VERSION}). Upgrade mmvit-study (`pip install -U mmvit-study`, or pull and "
                         "`pip install -e .`) to read or resume it.")
    return version


def _set_fields(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in fields(record) if getattr(record, f.name) is not None}


def _known(cls: type, attrs: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in attrs.items() if k in names}


@dataclass(frozen=True)
class StoredTrial:
    """A trial's user attributes, main study (``phase="final"``) or an arm's search study."""

    # --- identity and placement: written when the trial starts
    arm: str | None = None
    arm_index: int | None = None
    seed: int | None = None
    phase: str | None = None
    """``final`` (main study) or ``search``; absent means final."""
    driver: str | None = None
    """``host:pid:random`` of the driver that ran it (claims, waits, the summary)."""
    ray_trial: str | None = None
    node: str | None = None
    host: str | None = None
    gpu_ids: list[str] | None = None
    cuda_visible_devices: str | None = None
    heartbeat_s: float | None = None
    resources: dict[str, float] | None = None
    config: dict[str, Any] | None = None
    """The resolved :class:`mmvit.config.TrialConfig` (JSON)."""
    config_key: str | None = None
    search_params: dict[str, Any] | None = None
    """A final trial's parameters from its arm's search."""
    search_trial: int | None = None
    # --- progress: written while it runs
    history: list[dict[str, Any]] | None = None
    """One entry per finished epoch: ``epoch``, ``train_loss``, ``seconds`` and validation metrics."""
    resumed_from_epoch: int | None = None
    pruned_at_epoch: int | None = None
    error: str | None = None
    """``Type: message`` of a failure; ``interrupted: why`` for a trial that runs again."""
    retried: bool | None = None
    """A search trial whose point a newer trial (``resumes``) runs again."""
    resumes: int | None = None
    # --- results: written when it ends
    validation: dict[str, float | None] | None = None
    test: dict[str, float | None] | None = None
    """Final trials only: search trials measure no test metrics."""
    ap_per_class_validation: list[float | None] | None = None
    ap_per_class_test: list[float | None] | None = None
    best_epoch: int | None = None
    parameters: int | None = None
    samples_per_s: float | None = None
    peak_memory_mb: float | None = None
    wall_s: float | None = None
    epochs_run: int | None = None
    device: str | None = None
    precision: str | None = None
    class_counts: list[int] | None = None
    worker_rss_mb: float | None = None
    checkpoint_bytes: int | None = None
    """Final trials: the bytes of checkpoints it keeps once finished (its best weights; the resume
    state goes, :mod:`mmvit.study.checkpoints`). Absent in trials stored before 2026-12-08."""
    schema: int | None = None
    """Set on the record a trial starts with (:meth:`start`)."""

    def to_attrs(self) -> dict[str, Any]:
        """The fields that are set, as user attributes."""
        return _set_fields(self)

    @classmethod
    def start(cls, **identity: Any) -> StoredTrial:
        """The record a trial starts with: its identity and the schema version."""
        return cls(**identity, schema=SCHEMA_VERSION)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], what: str = "trial") -> StoredTrial:
        _check_version(attrs, what)
        return cls(**_known(cls, attrs))

    @classmethod
    def from_trial(cls, trial: Any) -> StoredTrial:
        """From an Optuna ``FrozenTrial`` (anything with ``user_attrs`` and ``number``)."""
        return cls.from_attrs(trial.user_attrs, f"trial {trial.number}")

    @property
    def point(self) -> tuple[str | None, int | None]:
        """(arm, seed): what a final trial runs; a study runs each point once."""
        return self.arm, self.seed

    @property
    def is_search(self) -> bool:
        return self.phase == "search"


def write_trial(storage: Any, trial_id: int, record: StoredTrial) -> None:
    """Record the set fields of ``record`` on a trial (one storage call per field)."""
    for key, value in record.to_attrs().items():
        storage.set_trial_user_attr(trial_id, key, value)


@dataclass(frozen=True)
class StoredArm:
    """One ablation point: ``labels`` (axis → value) name it in tables, ``settings`` (dotted key →
    value) make it; its Δ is against ``compare_with`` along ``axis`` (None: the reference arm)."""

    name: str
    labels: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    baseline: bool = False
    compare_with: str | None = None
    axis: str | None = None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> StoredArm:
        return cls(name=str(attrs["name"]), labels=dict(attrs.get("labels") or {}),
                   settings=dict(attrs.get("settings") or {}), baseline=bool(attrs.get("baseline")),
                   compare_with=attrs.get("compare_with"), axis=attrs.get("axis"))


@dataclass(frozen=True)
class StoredStudy:
    """The main study's user attributes. Its identity (spec, archive, profile, environment) is
    written when it is created or grows; the rest on every run."""

    spec: dict[str, Any] | None = None
    """The resolved study file (:class:`mmvit.study.spec.StudySpec`, JSON)."""
    spec_hash: str | None = None
    archive: str | None = None
    profile: str | None = None
    environment: dict[str, Any] | None = None
    """Package versions and the git commits (``git_commit``: the working directory's;
    ``mmvit_commit``: mmvit-study's own checkout, absent before 2026-12; ``-dirty`` marks
    uncommitted changes) of the run that created (or last grew) the study."""
    arms: list[StoredArm] | None = None
    labels: list[str] | None = None
    """The class names, in the order of every per-class list."""
    planned_seeds: list[int] | None = None
    """The seeds the run's profile trains (the quick profile may keep fewer than the file lists)."""
    search_studies: list[str] | None = None
    reference: dict[str, Any] | None = None
    archive_presence: dict[str, list[int]] | None = None
    """``{split: [present, listed]}``: how many of each split's patches the archive held."""
    checkpoint_disk: dict[str, Any] | None = None
    """What the study's checkpoints held when a run last measured them (at its start and end):
    ``path`` (folder or URI), ``bytes``, ``folders`` (trial folders), ``measured`` (ISO time).
    Absent in studies stored before 2026-12-08."""
    schema: int | None = None
    arms_compared: bool = False
    """Whether the arms record ``compare_with`` (studies from before per-axis comparisons do not).
    Read only: derived from the stored arms."""

    def to_attrs(self) -> dict[str, Any]:
        attrs = _set_fields(self)
        attrs.pop("arms_compared")
        if self.arms is not None:
            attrs["arms"] = [asdict(arm) for arm in self.arms]
        return attrs

    @classmethod
    def identity(cls, **fields_: Any) -> StoredStudy:
        """What a study is created with: its identity and the schema version."""
        return cls(**fields_, schema=SCHEMA_VERSION)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], what: str = "study") -> StoredStudy:
        _check_version(attrs, what)
        known = _known(cls, attrs)
        known.pop("arms_compared", None)
        arms = attrs.get("arms")
        if arms is not None:
            known["arms"] = [StoredArm.from_attrs(a) for a in arms]
        return cls(**known, arms_compared=any("compare_with" in a for a in arms or []))

    @classmethod
    def from_study(cls, study: Any) -> StoredStudy:
        """From an Optuna ``Study`` (anything with ``user_attrs`` and ``study_name``)."""
        return cls.from_attrs(study.user_attrs, f"study {study.study_name!r}")


def write_study(study: Any, record: StoredStudy | StoredSearchStudy) -> None:
    """Record the set fields of ``record`` on an Optuna study (one storage call per field)."""
    for key, value in record.to_attrs().items():
        study.set_user_attr(key, value)


@dataclass(frozen=True)
class StoredSearchStudy:
    """An arm's search study: which main study and arm it tunes."""

    parent: str | None = None
    arm: str | None = None
    arm_index: int | None = None
    schema: int | None = None

    def to_attrs(self) -> dict[str, Any]:
        return _set_fields(self)

    @classmethod
    def of(cls, parent: str, arm: str, arm_index: int) -> StoredSearchStudy:
        return cls(parent, arm, arm_index, SCHEMA_VERSION)

    @classmethod
    def from_study(cls, study: Any) -> StoredSearchStudy:
        _check_version(study.user_attrs, f"search study {study.study_name!r}")
        return cls(**_known(cls, study.user_attrs))


SLURM_JOB_PREFIX = "slurm_job:"


@dataclass(frozen=True)
class StoredSlurmJob:
    """One SLURM job (or one restart of a requeued job) that drove the study: a user attribute
    of the main study of its own, ``slurm_job:<job id>:<restart>``, so jobs never overwrite each
    other's records. Written when the job's driver starts (where the study exists already) and
    again when it ends; a job killed outright keeps ``outcome: running``."""

    job_id: str
    restart: int
    nodes: list[str]
    cpus_per_node: int
    gpus_per_node: int
    started: str
    """ISO time (UTC) the driver started."""
    ended: str | None = None
    outcome: str = "running"
    """``running``, ``completed``, ``requeued``, ``stopped`` (work left, no restart left), ``error``,
    or ``killed`` (SLURM ended the run before its driver could record how it ended)."""
    reason: str | None = None
    """Why it ended so: the signal that stopped it, the error, ``--max-restarts`` reached."""
    trials_run: int | None = None
    """Final trials this job's driver completed."""
    left: int | None = None
    """Planned final trials still to do when it ended."""

    @property
    def key(self) -> str:
        return f"{SLURM_JOB_PREFIX}{self.job_id}:{self.restart}"

    @classmethod
    def all_of(cls, study: Any) -> list[StoredSlurmJob]:
        """Every job record of an Optuna study, in the order the jobs started."""
        jobs = [cls(**_known(cls, value)) for key, value in study.user_attrs.items()
                if key.startswith(SLURM_JOB_PREFIX) and isinstance(value, Mapping)]
        return sorted(jobs, key=lambda job: (job.started, job.restart))


def write_slurm_job(study: Any, record: StoredSlurmJob) -> None:
    study.set_user_attr(record.key, asdict(record))
