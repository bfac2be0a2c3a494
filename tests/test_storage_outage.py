"""The database goes away (:mod:`mmvit.storage.resilient`): storage calls wait out a lost
server for a bounded time, writes a retry could repeat stay single, and a server that stays away
ends the run with one clear message — against injected faults (SQLite, fast), a real PostgreSQL
server stopped and started under a call, and (slow) a real study whose server restarts mid-study.

The end-to-end tests print what they measured (run pytest with ``-s`` to see it)."""

from __future__ import annotations

import glob
import logging
import os
import re
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, OperationalError, PendingRollbackError

from mmvit.storage import optuna_adapter
from mmvit.errors import StudyError
from mmvit.storage import resilient as resilient_storage
from mmvit.storage.resilient import (CREATION_KEY, NOT_RETRIED, RETRIED, RETRY_ENV, ResilientStorage,
                                           StorageUnreachable, connection_lost, raise_if_storage_lost)
from mmvit.storage.connection import open_storage, redact
from tests.pg_server import PASSWORD, postgres_server  # noqa: F401 (the fixture)
from tests.study_process import descendants, wait_mid_study
from tests.test_postgres import CLI, ENV

LOGGER = "mmvit.storage.resilient"


class PgError(Exception):
    """A driver exception as psycopg raises it: a message and a SQLSTATE (None: a libpq connection failure)."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def dropped() -> OperationalError:
    """What SQLAlchemy raises when the server closed the connection under a statement."""
    return OperationalError("COMMIT", {}, PgError("server closed the connection unexpectedly"),
                            connection_invalidated=True)


@pytest.fixture
def storage(tmp_path) -> ResilientStorage:
    storage = ResilientStorage(f"sqlite:///{tmp_path / 'outage.db'}", heartbeat_interval=2, grace_period=8)
    yield storage
    storage.engine.dispose()


def _after_commit_the_connection_drops(monkeypatch, name: str) -> list[int]:
    """``RDBStorage.<name>`` commits, then its first call fails as if the acknowledgement was lost."""
    calls, original = [], getattr(RDBStorage, name)

    def committed_then_dropped(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise StorageInternalError("An exception is raised during the commit.") from dropped()
        return result

    monkeypatch.setattr(RDBStorage, name, committed_then_dropped)
    return calls


@pytest.mark.parametrize("error, lost", [
    (dropped(), True),
    (OperationalError("SELECT", {}, PgError("terminating connection due to administrator command", "57P01")), True),
    (OperationalError("SELECT", {}, PgError("the database system is starting up", "57P03")), True),
    (OperationalError("SELECT", {}, PgError('connection failed: connection to server at "127.0.0.1", port 5432 '
                                            "failed: Connection refused")), True),
    (OperationalError("SELECT", {}, PgError('connection failed: … FATAL:  password authentication failed for '
                                            'user "postgres"')), False),
    (OperationalError("SELECT", {}, PgError('connection failed: … FATAL:  database "x" does not exist')), False),
    (OperationalError("SELECT", {}, PgError("deadlock detected", "40P01")), False),
    (IntegrityError("INSERT", {}, PgError("duplicate key value", "23505")), False),
    (OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked")), False),
    (UpdateFinishedTrialError("finished"), False),
    (ValueError("no"), False),
])
def test_only_a_lost_connection_counts_as_an_outage(error, lost):
    wrapped = StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = error  # how Optuna's RDBStorage reports an error inside a session
    assert connection_lost(error) is lost
    assert connection_lost(wrapped) is lost


def _optunas_fallback_query_on_a_dropped_session() -> StorageInternalError:
    """The error chain of ``RDBStorage._get_trials`` when the server restarts under its query: the
    OperationalError is caught ("Falling back to a slower alternative"), the fallback query on the
    same session raises PendingRollbackError, and the session wrapper raises StorageInternalError
    from that. The lost connection is only in the implicit context."""
    try:
        try:
            raise OperationalError("SELECT", {}, PgError("terminating connection due to administrator command", "57P01"))
        except OperationalError:
            raise PendingRollbackError("Can't reconnect until invalid transaction is rolled back.")
    except PendingRollbackError as error:
        try:
            raise StorageInternalError("An exception is raised during the commit.") from error
        except StorageInternalError as wrapped:
            return wrapped


def test_a_lost_connection_behind_optunas_own_fallback_query_counts_as_an_outage():
    """A trial's attempt died on this chain during ``pg_ctl restart`` (Ray ran it again)."""
    assert connection_lost(_optunas_fallback_query_on_a_dropped_session())
    try:
        try:
            raise dropped()
        except OperationalError as lost:
            raise ValueError("a bad value, reported as such") from None
    except ValueError as error:
        assert not connection_lost(error)  # `raise … from None` hides the context: not an outage


def test_every_storage_method_of_optuna_is_retried_or_needs_no_database():
    """An Optuna upgrade that adds a storage method fails here instead of bypassing the retries."""
    public = {name for name in dir(RDBStorage) if not name.startswith("_") and callable(getattr(RDBStorage, name))}
    special = {"create_new_study", "delete_study", "create_new_trial", "set_trial_state_values"}
    assert public <= set(RETRIED) | set(NOT_RETRIED) | special, public - set(RETRIED) - set(NOT_RETRIED) - special
    for name in (*RETRIED, *special):
        assert getattr(ResilientStorage, name) is not getattr(RDBStorage, name), name


def test_a_state_change_committed_before_the_connection_dropped_is_not_an_error(storage, monkeypatch):
    study = optuna.create_study(storage=storage, study_name="committed")
    trial_id = storage.create_new_trial(optuna_adapter.study_id(study))
    calls = _after_commit_the_connection_drops(monkeypatch, "set_trial_state_values")
    assert storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5]) is True
    assert len(calls) == 1, "the retry found the commit and wrote nothing"
    trial = storage.get_trial(trial_id)
    assert (trial.state, trial.values) == (TrialState.COMPLETE, [0.5])
    with pytest.raises(UpdateFinishedTrialError):  # a real conflict (another value) is still one
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.7])


@pytest.mark.parametrize("how", ["claim template", "study.ask"])
def test_a_trial_created_before_the_connection_dropped_is_not_created_twice(storage, monkeypatch, how):
    from mmvit.study.claims import claim

    study = optuna.create_study(storage=storage, study_name="created")
    _after_commit_the_connection_drops(monkeypatch, "_create_new_trial")
    if how == "claim template":  # a final trial's claim: a duplicate would hold its point and make it stand down
        trial_id = claim(study, {"arm": "a", "seed": 0, "driver": "d"})
        assert trial_id is not None, "the claim was not refused by its own duplicate"
    else:  # Ray's OptunaSearch asks its search trials
        trial_id = optuna_adapter.trial_id(study.ask())
    trials = storage.get_all_trials(optuna_adapter.study_id(study))
    assert [optuna_adapter.trial_id(t) for t in trials] == [trial_id]
    assert trials[0].state == TrialState.RUNNING and CREATION_KEY in trials[0].system_attrs


def test_a_second_copy_from_optunas_own_retry_is_marked_interrupted(storage, monkeypatch):
    """Optuna retries a failed creation itself (up to five times): when the first try had committed,
    two trials exist and only the second is handed back."""
    from mmvit.study.claims import claim, was_interrupted

    study = optuna.create_study(storage=storage, study_name="copied")
    original = RDBStorage._create_new_trial

    def committed_twice(self, study_id, template_trial=None):
        original(self, study_id, template_trial)
        return original(self, study_id, template_trial)

    monkeypatch.setattr(RDBStorage, "_create_new_trial", committed_twice)
    trial_id = claim(study, {"arm": "a", "seed": 0, "driver": "d"})
    assert trial_id is not None, "the claim was not refused by the copy"
    copy, kept = storage.get_all_trials(optuna_adapter.study_id(study))
    assert optuna_adapter.trial_id(kept) == trial_id and kept.state == TrialState.RUNNING
    assert was_interrupted(copy) and "second copy" in copy.user_attrs["error"], copy


def test_a_study_created_before_the_connection_dropped_is_found(storage, monkeypatch):
    _after_commit_the_connection_drops(monkeypatch, "create_new_study")
    study = optuna.create_study(storage=storage, study_name="made once")
    assert [s.study_name for s in storage.get_all_studies()] == ["made once"] and optuna_adapter.study_id(study) >= 0


def test_a_server_that_stays_away_ends_the_call_after_the_budget_and_later_calls_at_once(storage, monkeypatch,
                                                                                        caplog):
    study = optuna.create_study(storage=storage, study_name="gone")
    trial_id = storage.create_new_trial(optuna_adapter.study_id(study))
    original = RDBStorage.get_trial

    def unreachable(self, *args, **kwargs):
        raise StorageInternalError("An exception is raised during the commit.") from dropped()

    monkeypatch.setenv(RETRY_ENV, "1.4")  # read at call time
    monkeypatch.setattr(RDBStorage, "get_trial", unreachable)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    started = time.monotonic()
    with pytest.raises(StorageUnreachable) as gave_up:
        storage.get_trial(trial_id)
    waited = time.monotonic() - started
    assert 1.4 <= waited < 4, waited
    assert isinstance(gave_up.value, StudyError), "the CLI prints it as one paragraph, exit 1"
    message = str(gave_up.value)
    assert re.search(r"has been unreachable for \d+ s", message) and "Run the same command again" in message, message
    assert "server closed the connection unexpectedly" in message and "SQL" not in message
    started = time.monotonic()
    with pytest.raises(StorageUnreachable):  # e.g. the trial recording its failure: no second wait
        storage.get_trial(trial_id)
    assert time.monotonic() - started < 0.7, "half the budget: a second wait would take all of it"
    monkeypatch.setattr(RDBStorage, "get_trial", original)
    assert storage.get_trial(trial_id).state == TrialState.RUNNING
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 2, warnings
    assert "is unreachable (OperationalError: server closed the connection unexpectedly); retrying for up to " \
           f"1.4 s ({RETRY_ENV})" in warnings[0]
    assert re.search(r"reachable again after \d+\.\d s", warnings[1]), warnings


def test_integrity_and_state_errors_are_never_retried(storage, monkeypatch):
    study = optuna.create_study(storage=storage, study_name="wrong")
    trial_id = storage.create_new_trial(optuna_adapter.study_id(study))
    storage.set_trial_state_values(trial_id, TrialState.FAIL)
    monkeypatch.setenv(RETRY_ENV, "30")
    started = time.monotonic()
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial_id, "late", 1)
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):
        optuna.create_study(storage=storage, study_name="wrong")
    assert time.monotonic() - started < 2


def test_the_retry_budget_must_be_a_number(storage, monkeypatch):
    monkeypatch.setenv(RETRY_ENV, "soon")

    def unreachable(self):
        raise dropped()

    monkeypatch.setattr(RDBStorage, "get_all_studies", unreachable)
    with pytest.raises(StudyError, match=f"{RETRY_ENV} must be a number of seconds ≥ 0.*'soon'"):
        storage.get_all_studies()


def test_a_driver_whose_trial_gave_up_on_the_storage_stops_with_its_message():
    lost = StorageUnreachable("The study storage postgresql://u:***@db/x has been unreachable for 120 s …")
    ray_error = SimpleNamespace(cause=lost)  # Ray hands a trial's exception over as the cause of its own
    with pytest.raises(StorageUnreachable, match="unreachable for 120 s"):
        raise_if_storage_lost([SimpleNamespace(error=None), SimpleNamespace(error=ray_error)])
    raise_if_storage_lost([SimpleNamespace(error=None), SimpleNamespace(error=ValueError("a trial's own bug"))])


# -- a real PostgreSQL server that goes away ------------------------------------------------------


def _study_and_trial(storage) -> tuple[optuna.Study, int]:
    study = optuna.create_study(storage=storage, study_name=f"outage-{uuid.uuid4().hex[:8]}")
    return study, storage.create_new_trial(optuna_adapter.study_id(study))


def test_a_call_during_a_server_outage_waits_for_the_server_and_says_so(postgres_server, caplog):
    storage = open_storage(postgres_server.url)
    assert isinstance(storage, ResilientStorage)
    study, trial_id = _study_and_trial(storage)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    outage = 3.0
    postgres_server.stop("fast")  # the pool's connections are cut, new ones refused
    down = time.monotonic()
    back = {}

    def start_again() -> None:
        postgres_server.start()
        back["at"] = time.monotonic()

    thread = threading.Timer(outage, start_again)
    thread.start()
    try:
        storage.set_trial_user_attr(trial_id, "written", "during the outage")
        waited = time.monotonic() - down
    finally:
        thread.join()
        postgres_server.ensure_running()
    server_down = back["at"] - down
    print(f"\nserver down {server_down:.1f} s (stop → start returned); the call returned after {waited:.1f} s")
    assert outage <= waited < server_down + resilient_storage.MAX_DELAY_S + 2, (server_down, waited)
    assert storage.get_trial(trial_id).user_attrs["written"] == "during the outage"
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 2 and "is unreachable" in warnings[0] and "reachable again" in warnings[1], warnings
    assert "postgres:***@127.0.0.1" in warnings[0] and all(PASSWORD not in w for w in warnings)

    postgres_server.restart("fast")  # pooled connections died with the server: pre-ping replaces them
    assert study.get_trials()[0].user_attrs["written"] == "during the outage"


def test_a_server_that_stays_away_ends_the_call_with_a_clear_error(postgres_server, monkeypatch):
    storage = open_storage(postgres_server.url)
    study, trial_id = _study_and_trial(storage)
    monkeypatch.setenv(RETRY_ENV, "1.5")
    postgres_server.stop("fast")
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnreachable) as gave_up:
            study.get_trials()
        waited = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(StorageUnreachable):
            storage.set_trial_user_attr(trial_id, "error", "recording a failure")
        again = time.monotonic() - started
    finally:
        postgres_server.ensure_running()
    assert 1.5 <= waited < 5 and again < 1, (waited, again)
    message = str(gave_up.value)
    assert message.startswith(f"The study storage {redact(postgres_server.url)} has been unreachable for "), message
    assert "Connection refused" in message and "Everything recorded before is kept" in message
    assert "Run the same command again once the database server is back." in message
    assert PASSWORD not in message and "\n" not in message
    assert storage.get_trial(trial_id).state == TrialState.RUNNING, "the server is back: so is the storage"


# -- a study whose server restarts --------------------------------------------------------------

EPOCHS = 40
SPEC = """\
study: {name}
ablate:
  model.fusion: [early, sct]
seeds: [0, 1]
base:
  model: {patch_size: 30, depth: 1, embed_dim: 32, num_heads: 2}
  train: {epochs: 40, batch_size: 32}
  data: {num_workers: 0}
resources: {cpu: 1}
max_concurrent: 2
"""
PLANNED = 4


def _command(tmp_path: Path, url: str, demo_root: Path) -> list[str]:
    return [CLI, "run", str(tmp_path / "study.yaml"), "--storage", url, "--data", str(demo_root),
            "--profile", "full", "--studies-dir", str(tmp_path / "studies"), "--reports-dir", str(tmp_path / "reports")]


def _start(tmp_path: Path, url: str, demo_root: Path, env: dict, name: str) -> subprocess.Popen:
    """A study of its own (every test of the session shares the server's database)."""
    (tmp_path / "study.yaml").write_text(SPEC.replace("{name}", name))
    return subprocess.Popen(_command(tmp_path, url, demo_root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, cwd=tmp_path, env=env)


def _finish(process: subprocess.Popen, timeout: float) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [process.pid, *descendants(process.pid)]:
            subprocess.run(["kill", "-9", str(pid)], capture_output=True)
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"the run did not end within {timeout:.0f} s:\n{output}")
    return output


def _progress(trials) -> dict[int, int]:
    """Trial number → epochs recorded, for the RUNNING and COMPLETE trials."""
    return {t.number: len(t.user_attrs.get("history", [])) for t in trials
            if t.state in (TrialState.RUNNING, TrialState.COMPLETE)}


def _worker_waits(port: int, since: float) -> list[float]:
    """Seconds each outage lasted for a trial process, from the warnings in the logs of the Ray
    sessions started since ``since`` (a trial's log does not reach the terminal)."""
    waits = []
    for path in glob.glob("/tmp/ray/session_2*/logs/worker-*.err"):
        if os.path.getmtime(path) >= since:
            text = Path(path).read_text(errors="replace")
            waits += [float(s) for s in re.findall(rf"127\.0\.0\.1:{port}/mmvit is reachable again after ([\d.]+) s",
                                                   text)]
    return waits


def _check_study_complete(trials, before) -> list:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == PLANNED, [(t.number, t.state.name, t.user_attrs.get("error")) for t in trials]
    assert len({t.user_attrs["config_key"] for t in complete}) == PLANNED, "no point completed twice"
    done_before = {t.number for t in before if t.state == TrialState.COMPLETE}
    assert done_before and done_before <= {t.number for t in complete}, "finished trials are kept, not re-run"
    for trial in complete:
        assert [r["epoch"] for r in trial.user_attrs["history"]] == list(range(1, EPOCHS + 1)), trial.number
    return complete


def _clean(output: str) -> None:
    assert PASSWORD not in output, "the password appears in the run's output"
    assert "Traceback" not in output, output
    assert "Interrupted" not in output, output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_study_rides_out_a_server_restart(tmp_path, demo_root, postgres_server):
    """``pg_ctl restart -m fast`` in the middle of a study: the running trials and the driver wait
    for the server, the run ends normally, nothing is interrupted or run twice."""
    storage = open_storage(postgres_server.url)
    started, started_at = time.monotonic(), time.time()
    process = _start(tmp_path, postgres_server.url, demo_root, ENV, "pg-restart")
    try:
        study_of = lambda: optuna.load_study(study_name="pg-restart", storage=storage)  # noqa: E731
        before = wait_mid_study(study_of, process, EPOCHS)
        at_restart = _progress(before)
        restart_began = time.monotonic()
        postgres_server.restart("fast")
        restart_s = time.monotonic() - restart_began
        moved = None
        while moved is None and time.monotonic() - restart_began < 120 and process.poll() is None:
            now = _progress(study_of().get_trials())
            if any(now.get(number, 0) > epochs for number, epochs in at_restart.items() if epochs < EPOCHS):
                moved = time.monotonic() - restart_began
            else:
                time.sleep(0.05)
        output = _finish(process, 400)
    finally:
        postgres_server.ensure_running()
        if process.poll() is None:
            _finish(process, 1)
    total_s = time.monotonic() - started
    assert process.returncode == 0, output
    _clean(output)
    trials = study_of().get_trials()
    complete = _check_study_complete(trials, before)
    assert len(trials) == PLANNED, ("nothing was interrupted, failed or created twice",
                                    [(t.number, t.state.name, t.user_attrs.get("error")) for t in trials])
    redone = [t.number for t in complete if t.user_attrs.get("resumed_from_epoch")]
    assert redone == [], "no trial had to resume from a checkpoint"
    waits = _worker_waits(postgres_server.port, started_at)
    if glob.glob("/tmp/ray/session_2*/logs/worker-*.err"):  # Ray keeps its logs there: the outage was met
        assert waits, "no trial process met the outage: the test did not test it"
    said = re.findall(r"reachable again after [\d.]+ s", output)
    running = {number: epochs for number, epochs in at_restart.items()
               if next(t for t in before if t.number == number).state == TrialState.RUNNING}
    print(f"\npg_ctl restart -m fast took {restart_s:.1f} s; trials running then (number: epochs recorded): "
          f"{running}; trial processes waited {waits} s for the server; the first epoch recorded after the "
          f"restart came {moved if moved is None else round(moved, 1)} s after it began; the driver said "
          f"{said or 'nothing (none of its calls fell in the outage)'}; trials redone: 0, epochs redone: 0; "
          f"{len(complete)}/{PLANNED} COMPLETE, run {total_s:.0f} s in all")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_server_that_stays_away_stops_the_study_cleanly_and_the_same_command_completes_it(
        tmp_path, demo_root, postgres_server):
    """The server stays down for longer than the retry budget: the run ends with exit 1 and one
    paragraph that says what happened (no traceback, not "Interrupted"); once the server is back the
    same command completes the study, keeping every finished trial and running no point twice."""
    budget = 4
    storage = open_storage(postgres_server.url)
    process = _start(tmp_path, postgres_server.url, demo_root, {**ENV, RETRY_ENV: str(budget)}, "pg-gone")
    try:
        study_of = lambda: optuna.load_study(study_name="pg-gone", storage=storage)  # noqa: E731
        before = wait_mid_study(study_of, process, EPOCHS)
        at_stop = _progress(before)
        postgres_server.stop("fast")
        down = time.monotonic()
        output = _finish(process, 300)
        stopped_after = time.monotonic() - down
    finally:
        postgres_server.ensure_running()
        if process.poll() is None:
            _finish(process, 1)
    assert process.returncode == 1, output
    _clean(output)
    assert f"Error: The study storage {redact(postgres_server.url)} has been unreachable for " in output, output
    assert "Run the same command again once the database server is back." in output, output

    again = subprocess.run(_command(tmp_path, postgres_server.url, demo_root), capture_output=True, text=True,
                           cwd=tmp_path, env=ENV, timeout=400)
    resumed = again.stdout + again.stderr
    assert again.returncode == 0, resumed
    _clean(resumed)
    trials = study_of().get_trials()
    complete = _check_study_complete(trials, before)
    left = [t for t in trials if t.state != TrialState.COMPLETE]
    assert all(t.state == TrialState.FAIL and t.user_attrs["error"].startswith("interrupted") for t in left), \
        [(t.number, t.state.name, t.user_attrs.get("error")) for t in left]
    resumed_from = {t.user_attrs["config_key"]: t.user_attrs.get("resumed_from_epoch", 0) for t in complete}
    interrupted = {t.number: (at_stop.get(t.number, 0), resumed_from[t.user_attrs["config_key"]]) for t in left}
    running = {number: epochs for number, epochs in at_stop.items()
               if next(t for t in before if t.number == number).state == TrialState.RUNNING}
    print(f"\nretry budget {budget} s: the run ended {stopped_after:.1f} s after the server went away (exit 1); "
          f"trials running then (number: epochs recorded): {running}; on the second run, interrupted trials "
          f"(number: (epochs recorded before the stop, epoch the rerun resumed from)): {interrupted}; "
          f"{len(complete)}/{PLANNED} COMPLETE, {len(trials)} trials in storage")
