"""Optuna storage that rides out a database server going away for a while (a restart, a failover).

:class:`ResilientStorage` is an :class:`optuna.storages.RDBStorage` whose storage methods, when the
server cannot be reached (the connection dropped, or is refused), try again with exponential
back-off (0.5 s doubling to 8 s) for a bounded time: ``$MMVIT_STORAGE_RETRY_S`` seconds (120 by
default; read at each outage, so a test or a cluster can change it). One warning says when the
outage starts, one when the server is back; if it stays away, :class:`StorageUnreachable` (a
:class:`~mmvit.errors.StudyError`: one paragraph, no traceback) says what happened and what to do.

An outage is shared by every thread of a process that uses the storage (the trial, its heartbeat
thread, the live view): its clock starts at the first failed call, so a call made late in an
outage waits only for what is left of it, and a call made after the process gave up fails at
once — a trial recording its own failure does not wait a second time.

Retries are never made on integrity, programming or data errors, only on a lost connection. A
write may have been committed just before its connection dropped, so the retried writes are
made idempotent:

* ``set_trial_state_values``: a retry that finds the trial already in the requested state (and
  with the requested values) is the first attempt's commit, not an error;
* creating a trial: each new trial carries a random ``mmvit:creation`` system attribute; a retry
  first looks for a trial with it, and returns a committed first attempt instead of creating
  another. Optuna's own retries of a creation (up to five, inside ``_create_new_trial``) cannot be
  told apart, so after every creation the trials with the token are counted and any second copy
  is marked interrupted at once. A duplicate RUNNING trial would otherwise hold its grid point
  with nobody running it: the real trial would stand down in :func:`mmvit.study.claims.claim`,
  and the driver would end the run "interrupted" (a search trial's copy would take a slot of the
  arm's budget);
* ``create_new_study`` and ``delete_study``: a retry that finds the study created (deleted)
  returns as the first attempt would have;
* attributes, intermediate values, heartbeats and params are upserts or ignore a duplicate.

Optuna wraps an RDBStorage in a cache that calls a few of its private methods; those are
retried too. Which ones, and the queries of Optuna's own tables (trials without a heartbeat,
trials created with a token), live in :mod:`mmvit.storage.optuna_adapter`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
import uuid
from datetime import datetime
from typing import Any, Callable, Iterable, TypeVar

import optuna
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from mmvit.errors import StudyError
from mmvit.storage import optuna_adapter
from mmvit.storage.connection import redact
from mmvit.storage.optuna_adapter import CACHE_CALLS, CacheCallRoutes

log = logging.getLogger(__name__)

RETRY_ENV = "MMVIT_STORAGE_RETRY_S"
DEFAULT_RETRY_S = 120.0
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 8.0
CREATION_KEY = "mmvit:creation"
"""System attribute of every trial this storage creates: a random token, so a retried creation
finds the trial its first attempt may have committed."""

T = TypeVar("T")

# Connection failures that are a fact about the URL, not an outage: retrying them only delays the answer.
_PERMANENT = ("password authentication failed", "authentication failed", "no pg_hba.conf entry",
              "does not exist", "permission denied")
# MySQL client error codes of a lost or refused connection (SQLAlchemy reports most as disconnects too).
_MYSQL_GONE = {1040, 1053, 2002, 2003, 2006, 2013, 2055}


class StorageUnreachable(StudyError):
    """The database server stayed unreachable for longer than the retry budget."""


def retry_budget() -> float:
    """Seconds an outage is waited out: ``$MMVIT_STORAGE_RETRY_S`` now (default 120; 0: no retry)."""
    text = os.environ.get(RETRY_ENV, "").strip()
    if not text:
        return DEFAULT_RETRY_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise StudyError(f"{RETRY_ENV} must be a number of seconds ≥ 0 (how long a run waits for the study "
                         f"storage to come back), but got {text!r}.")
    return seconds


def _dbapi_error(error: BaseException | None) -> DBAPIError | None:
    """The SQLAlchemy driver error behind ``error``: Optuna raises StorageInternalError *from* it,
    and where Optuna catches a driver error and tries again on the same session (``_get_trials``
    falls back to a slower query after an OperationalError) the second attempt raises SQLAlchemy's
    PendingRollbackError *while handling* the first, so the chain is followed through the implicit
    context too, unless a ``raise … from`` suppressed it."""
    for _ in range(8):
        if error is None or isinstance(error, DBAPIError):
            return error
        error = error.__cause__ if error.__cause__ is not None else (
            None if error.__suppress_context__ else error.__context__)
    return None


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` means the database server cannot be reached right now (retry), rather
    than that the request or the data is wrong (never retried)."""
    found = _dbapi_error(error)
    if found is None:
        return False
    if found.connection_invalidated:  # the dialect recognised a disconnect
        return True
    if not isinstance(found, (OperationalError, InterfaceError)):
        return False  # IntegrityError, ProgrammingError, DataError …: retrying changes nothing
    orig = found.orig
    module = type(orig).__module__ or ""
    if module.startswith("sqlite3"):
        return False  # a file, not a server: "database is locked" has its own timeout
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate is not None:  # PostgreSQL: connection exception, shutdown/starting up, too many clients
        return sqlstate.startswith("08") or sqlstate in {"57P01", "57P02", "57P03", "53300"}
    code = orig.args[0] if getattr(orig, "args", None) and isinstance(orig.args[0], int) else None
    if code is not None:
        return code in _MYSQL_GONE
    message = str(orig).lower()  # libpq's connection failures carry no SQLSTATE, only their text
    return not any(text in message for text in _PERMANENT)


def describe(error: BaseException, url: str) -> str:
    """``OperationalError: connection refused …`` — the driver's first line, without SQL, parameters
    or the URL's password."""
    found = _dbapi_error(error)
    cause = found.orig if found is not None and found.orig is not None else (found or error)
    lines = str(cause).strip().splitlines()
    text = f"{type(found or error).__name__}: {lines[0] if lines else type(cause).__name__}"
    try:
        password = make_url(url).password
    except ArgumentError:
        password = None
    return text.replace(str(password), "***") if password else text


class _Outage:
    """When this process first failed to reach the server in the current outage (None: reachable)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: float | None = None


class ResilientStorage(CacheCallRoutes, RDBStorage):
    """An RDBStorage whose calls wait out a lost database server (module docstring)."""

    def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
        self._outage = _Outage()
        self._local = threading.local()
        super().__init__(url, *args, **kwargs)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_outage", None)
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self._outage = _Outage()
        self._local = threading.local()
        super().__setstate__(state)

    # -- the retry loop --------------------------------------------------------------------------

    def retrying(self, call: Callable[[int], T]) -> T:
        """``call(attempt)`` until it returns without a lost connection (attempt 0, 1, …), waiting
        out an outage for at most the retry budget. Nested calls (an Optuna method calling another)
        are left to the outermost one."""
        if getattr(self._local, "depth", 0):
            return call(0)
        self._local.depth = 1
        try:
            attempt = 0
            while True:
                try:
                    result = call(attempt)
                except Exception as error:
                    if not connection_lost(error):
                        raise
                    time.sleep(self._wait(error, attempt))
                    attempt += 1
                    continue
                self._reachable()
                return result
        finally:
            self._local.depth = 0

    def _wait(self, error: BaseException, attempt: int) -> float:
        """Seconds to sleep before the next attempt; StorageUnreachable once the budget is spent."""
        budget = retry_budget()
        with self._outage.lock:
            now = time.monotonic()
            if self._outage.started is None:
                self._outage.started = now
                if budget > 0:
                    log.warning("The study storage %s is unreachable (%s); retrying for up to %g s (%s).",
                                redact(self.url), describe(error, self.url), budget, RETRY_ENV)
            elapsed = now - self._outage.started
        left = budget - elapsed
        if left <= 0:
            raise StorageUnreachable(
                f"The study storage {redact(self.url)} has been unreachable for {elapsed:.0f} s "
                f"({describe(error, self.url)}); this run waits {budget:g} s for it to come back "
                f"(${RETRY_ENV}). Everything recorded before is kept in the storage: finished trials "
                "stay finished, and trials that were running resume from their last epoch checkpoint. "
                "Run the same command again once the database server is back.") from None
        return min(FIRST_DELAY_S * 2 ** attempt, MAX_DELAY_S, left)

    def _reachable(self) -> None:
        with self._outage.lock:
            started, self._outage.started = self._outage.started, None
        if started is not None:
            log.warning("The study storage %s is reachable again after %.1f s; the study goes on.",
                        redact(self.url), time.monotonic() - started)

    def _retried(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(RDBStorage, name)  # looked up at call time: tests inject faults there
        return self.retrying(lambda attempt: method(self, *args, **kwargs))

    # -- writes that a retry must not repeat -------------------------------------------------------

    def create_new_study(self, directions, study_name=None) -> int:  # type: ignore[override]
        def call(attempt: int) -> int:
            try:
                return RDBStorage.create_new_study(self, directions, study_name)
            except DuplicatedStudyError:
                if attempt and study_name is not None:  # the first attempt's commit
                    return RDBStorage.get_study_id_from_name(self, study_name)
                raise

        return self.retrying(call)

    def delete_study(self, study_id: int) -> None:
        def call(attempt: int) -> None:
            try:
                RDBStorage.delete_study(self, study_id)
            except KeyError:
                if not attempt:  # a retry that finds no study: the first attempt deleted it
                    raise

        self.retrying(call)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return optuna_adapter.trial_id(self.create_frozen_trial(study_id, template_trial))

    def create_frozen_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        token = uuid.uuid4().hex
        if template_trial is None:  # what RDBStorage creates without a template, plus the token
            template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
                                   datetime_complete=None, params={}, distributions={}, user_attrs={},
                                   system_attrs={CREATION_KEY: token}, intermediate_values={}, trial_id=-1)
        else:
            template = copy.copy(template_trial)  # the caller's template is left as it was
            template.system_attrs = {**template_trial.system_attrs, CREATION_KEY: token}

        def with_token() -> list[int]:
            return optuna_adapter.trials_with_system_attr(self.scoped_session, study_id, CREATION_KEY, json.dumps(token))

        def call(attempt: int) -> FrozenTrial:
            created = with_token() if attempt else []
            trial = None if created else optuna_adapter.rdb_create_trial(self, study_id, template)
            if trial is not None:  # Optuna itself retries a failed creation up to five times
                created = with_token()
            kept = optuna_adapter.trial_id(trial) if trial is not None else created[0]
            for other in created:
                if other != kept:
                    self._void_duplicate(other, kept)
            return trial if trial is not None else RDBStorage.get_trial(self, kept)

        return self.retrying(call)

    def _void_duplicate(self, trial_id: int, kept: int) -> None:
        """A creation committed twice (retried after its connection dropped): the copy nobody was
        handed would hold its grid point without anyone running it, so it ends interrupted."""
        from mmvit.record_schema import INTERRUPTED, StoredTrial

        if RDBStorage.get_trial(self, trial_id).state.is_finished():
            return
        error = StoredTrial(error=f"{INTERRUPTED}: a second copy of trial id {kept}, created by a write retried "
                                  "after the database connection dropped")
        for key, value in error.to_attrs().items():  # RDBStorage's own call: this runs inside a retry
            RDBStorage.set_trial_user_attr(self, trial_id, key, value)
        try:
            RDBStorage.set_trial_state_values(self, trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:  # type: ignore[override]
        def call(attempt: int) -> bool:
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                if attempt:
                    stored = RDBStorage.get_trial(self, trial_id)
                    if stored.state == state and (values is None or stored.values == list(values)):
                        return True  # the first attempt's commit
                raise

        return self.retrying(call)

    # -- the raw queries of Optuna's tables -----------------------------------------------------

    def running_without_heartbeat(self, study_id: int) -> set[int]:
        """Ids of the study's RUNNING trials that never recorded a heartbeat (killed within a
        moment of their creation, or written by a version without heartbeats)."""
        return self.retrying(lambda attempt: optuna_adapter.running_without_heartbeat(self.scoped_session, study_id))


RETRIED = (
    # BaseStorage / BaseHeartbeat methods RDBStorage implements with a database round trip
    "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name", "get_study_name_from_id",
    "get_study_directions", "get_study_user_attrs", "get_study_system_attrs", "get_all_studies",
    "set_trial_param", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial_param",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr", "get_trial",
    "get_all_trials", "get_n_trials", "get_best_trial", "get_trial_params", "get_trial_user_attrs",
    "get_trial_system_attrs", "record_heartbeat",
    # what Optuna's _CachedStorage calls on the RDBStorage it wraps
    *CACHE_CALLS,
)
"""Retried as they are (reads, upserts); the writes a retry could repeat are methods above."""

NOT_RETRIED = ("remove_session", "upgrade", "get_current_version", "get_head_version", "get_all_versions",
               "check_trial_is_updatable", "get_heartbeat_interval", "get_heartbeat_stale_trial_callback",
               "get_failed_trial_callback")
"""Public methods left alone: no database round trip, or administration outside a study run."""


def _retried_method(name: str) -> Callable[..., Any]:
    def method(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retried(name, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = getattr(RDBStorage, name).__doc__
    return method


for _name in RETRIED:
    setattr(ResilientStorage, _name, _retried_method(_name))


def running_without_heartbeat(storage: optuna.storages.BaseStorage, study_id: int) -> set[int]:
    """:meth:`ResilientStorage.running_without_heartbeat` of any RDBStorage (retried if it is a
    ResilientStorage); a study wraps its storage in a cache, whose backend is asked."""
    backend = optuna_adapter.backend(storage)
    if isinstance(backend, ResilientStorage):
        return backend.running_without_heartbeat(study_id)
    return optuna_adapter.running_without_heartbeat(backend.scoped_session, study_id)


def raise_if_storage_lost(results: Iterable[Any]) -> None:
    """Raise the :class:`StorageUnreachable` a trial of ``results`` (a Ray Tune ResultGrid) gave up
    with: a driver whose trials lost the database stops with that message, not as if the user had
    stopped it (its running trials were left RUNNING or marked interrupted; either way they resume)."""
    for result in results:
        error = getattr(result, "error", None)
        cause = getattr(error, "cause", None) or error  # Ray wraps a trial's exception
        if isinstance(cause, StorageUnreachable):
            raise StorageUnreachable(str(cause)) from None
