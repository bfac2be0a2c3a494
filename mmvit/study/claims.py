"""Which driver runs which trial: heartbeats, stale trials, and claiming a point of the grid.

Two ``mmvit-study run`` processes may work on one study at once (two users on a cluster, or a
resume started while the first run is alive). Every RUNNING trial carries its driver's id
(``driver`` attr) and an Optuna heartbeat (``RDBStorage(heartbeat_interval, grace_period)``,
stamped with the database's clock, so hosts need not agree on time), recorded by a thread in
the process that runs it. A trial whose heartbeat is older than the grace period belongs to a
driver that is gone: it is *stale*, and only stale trials are marked interrupted by another
driver. A final trial claims its (arm, seed) point when it starts: it stands down if the point
is COMPLETE or held by a live trial, and of two trials that claimed at the same moment the one
with the lower number keeps it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from mmvit.errors import StudyError
from mmvit.record_schema import INTERRUPTED, StoredTrial, write_trial
from mmvit.storage import optuna_adapter
from mmvit.storage.connection import grace_s, heartbeat_s
from mmvit.storage.resilient import running_without_heartbeat

log = logging.getLogger(__name__)



def was_interrupted(trial: FrozenTrial) -> bool:
    """FAIL only because its driver stopped (Ctrl-C, a kill): not a failure, it runs again."""
    return trial.state == TrialState.FAIL and str(StoredTrial.from_trial(trial).error or "").startswith(INTERRUPTED)


def state_label(trial: FrozenTrial) -> str:
    """The state to show a person: INTERRUPTED apart from real failures."""
    return "INTERRUPTED" if was_interrupted(trial) else trial.state.name


def new_driver_id() -> str:
    """``host:pid:random`` — readable in ``status``, unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Heartbeats:
    """A daemon thread recording a heartbeat every :func:`heartbeat_s` for a changing set of trials."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_ids: tuple[int, ...] = ()) -> None:
        self.storage = storage
        self.interval = heartbeat_s()
        self.trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="mmvit-heartbeats", daemon=True)
        for trial_id in trial_ids:
            self.add(trial_id)

    def add(self, trial_id: int) -> None:
        self.storage.record_heartbeat(trial_id)  # at once: no window without a heartbeat
        with self._lock:
            self.trial_ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = sorted(self.trial_ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as error:  # a busy database: the next beat may get through
                    log.warning("Heartbeat of trial %s not recorded: %s", trial_id, error)

    def __enter__(self) -> "Heartbeats":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


def stale_trials(study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials whose driver is gone: heartbeat older than the grace period, or none at
    all for longer than the grace period."""
    storage, study_id = optuna_adapter.study_storage(study), optuna_adapter.study_id(study)
    stale = set(optuna_adapter.stale_trial_ids(storage, study_id))
    silent = running_without_heartbeat(storage, study_id)
    oldest = datetime.now() - timedelta(seconds=grace_s())
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t for t in running if (trial_id := optuna_adapter.trial_id(t)) in stale
            or (trial_id in silent and t.datetime_start is not None and t.datetime_start < oldest)]


def interrupt(storage: optuna.storages.BaseStorage, trial_id: int, why: str) -> bool:
    """RUNNING → FAIL with ``interrupted: why`` (it runs again); False if it finished meanwhile."""
    try:
        write_trial(storage, trial_id, StoredTrial(error=f"{INTERRUPTED}: {why}"))
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        return True
    except UpdateFinishedTrialError:  # it finished, or another driver got there first
        return False


def fail_stale(study: optuna.Study) -> list[FrozenTrial]:
    """Mark the trials of dead drivers interrupted; returns them."""
    storage = optuna_adapter.study_storage(study)
    return [t for t in stale_trials(study) if interrupt(storage, optuna_adapter.trial_id(t), "its driver stopped")]


def release_own(study: optuna.Study, driver: str) -> int:
    """This driver's trials still RUNNING once its Tuner returned (Ctrl-C, a crashed worker) →
    interrupted; another driver's live trials are left alone."""
    mine = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if StoredTrial.from_trial(t).driver == driver]
    storage = optuna_adapter.study_storage(study)
    return sum(interrupt(storage, optuna_adapter.trial_id(t), "its driver stopped") for t in mine)


def live_running(study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials whose driver is alive."""
    stale = {optuna_adapter.trial_id(t) for t in stale_trials(study)}
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if optuna_adapter.trial_id(t) not in stale]


def holders(study: optuna.Study, point: tuple, *, before: int | None = None) -> list[FrozenTrial]:
    """Trials that hold ``point``: COMPLETE, or RUNNING and live (numbered below ``before``)."""
    live = {optuna_adapter.trial_id(t) for t in live_running(study)}
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            if StoredTrial.from_trial(t).point == point and (t.state == TrialState.COMPLETE or optuna_adapter.trial_id(t) in live)
            and (before is None or t.number < before or t.state == TrialState.COMPLETE)]


def claim(study: optuna.Study, attrs: dict) -> int | None:
    """Create the RUNNING trial of the point ``(attrs["arm"], attrs["seed"])`` with all its
    attributes in one transaction and a first heartbeat, or return None when the point is
    taken (COMPLETE, or a live trial of any driver holds it)."""
    point = (attrs["arm"], attrs["seed"])
    if holders(study, point):
        return None
    storage = optuna_adapter.study_storage(study)
    template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
                           datetime_complete=None, params={}, distributions={}, user_attrs=attrs,
                           system_attrs={}, intermediate_values={}, trial_id=-1)
    trial_id = storage.create_new_trial(optuna_adapter.study_id(study), template_trial=template)
    storage.record_heartbeat(trial_id)
    number = storage.get_trial(trial_id).number
    first = holders(study, point, before=number)
    if first:  # another driver claimed the same point at the same moment, and first
        interrupt(storage, trial_id, f"trial {first[0].number} of another driver runs this point")
        return None
    return trial_id
