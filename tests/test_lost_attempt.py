"""A final trial Ray runs again after its worker was lost (:func:`mmvit.study.trial.take_over_lost_attempt`):
it waits until its earlier attempt's heartbeat is stale, marks it interrupted and claims the point;
after a real failure it stands down. (End to end, with a node killed: tests/test_multinode.py.)"""

from __future__ import annotations

import threading
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from mmvit.storage import optuna_adapter
from mmvit.study import claims
from mmvit.study.trial import take_over_lost_attempt

GRACE = 2  # seconds without a heartbeat before a trial is stale, in these tests


@pytest.fixture
def study(tmp_path, monkeypatch) -> optuna.Study:
    monkeypatch.setattr(claims, "heartbeat_s", lambda: 1)
    monkeypatch.setattr(claims, "grace_s", lambda: GRACE)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'lost.db'}", heartbeat_interval=1,
                                         grace_period=GRACE)
    yield optuna.create_study(storage=storage, study_name=f"lost-{uuid.uuid4().hex[:8]}")
    storage.engine.dispose()


def attrs(driver: str = "me", ray_trial: str = "abcde_00000", arm: str = "a") -> dict:
    return {"arm": arm, "seed": 0, "driver": driver, "ray_trial": ray_trial}


def test_a_first_attempt_and_other_trials_do_not_wait(study):
    others = [claims.claim(study, attrs(driver="them")), claims.claim(study, attrs(ray_trial="fghij_00000", arm="b"))]
    started = time.time()
    assert take_over_lost_attempt(study, attrs(arm="c")) is True
    assert time.time() - started < GRACE, "no earlier attempt of this Ray trial: nothing to wait for (a wait takes GRACE)"
    assert {optuna_adapter.study_storage(study).get_trial(i).state for i in others} == {TrialState.RUNNING}, "left alone"


def test_a_retry_waits_for_the_lost_attempts_heartbeat_to_stop_then_takes_its_point_over(study):
    lost = claims.claim(study, attrs())
    outcome = []
    with claims.Heartbeats(optuna_adapter.study_storage(study), (lost,)):  # the earlier attempt still beats (not gone yet)
        retry = threading.Thread(target=lambda: outcome.append(take_over_lost_attempt(study, attrs())))
        retry.start()
        time.sleep(GRACE + 1)
        assert retry.is_alive() and optuna_adapter.study_storage(study).get_trial(lost).state == TrialState.RUNNING, \
            "an attempt that still beats is never taken over"
    stopped = time.time()
    retry.join(timeout=GRACE + 10)
    assert outcome == [True]
    assert time.time() - stopped >= GRACE - 1, "taken over once its heartbeat was stale"
    trial = optuna_adapter.study_storage(study).get_trial(lost)
    assert trial.state == TrialState.FAIL and trial.user_attrs["error"].startswith(claims.INTERRUPTED)
    assert claims.claim(study, attrs()) is not None, "the retry claims the point"


def test_a_retry_after_a_real_failure_stands_down(study):
    failed = claims.claim(study, attrs())
    optuna_adapter.study_storage(study).set_trial_user_attr(failed, "error", "RuntimeError: boom")
    optuna_adapter.study_storage(study).set_trial_state_values(failed, TrialState.FAIL)
    assert take_over_lost_attempt(study, attrs()) is False
    assert len(study.get_trials()) == 1, "the failure stands; nothing runs the point again"


def test_ray_retries_a_failed_trial_but_the_failure_stands(ray_session, tmp_path):
    """Final trials run with ``FailureConfig(max_failures=...)`` (for lost workers): a trial whose
    training raised is started again by Ray, finds its own failed attempt and stands down — one
    FAIL in storage, the point not trained twice, the study goes on."""
    from mmvit.data.demo import write_demo_archive
    from mmvit.study.runner import LOST_WORKER_RETRIES, run_study
    from mmvit.storage.connection import open_storage, storage_url

    root = write_demo_archive(tmp_path / "archive", patches=60, seed=3)
    next(root.glob("BigEarthNet-S1-v1.0/*/*_VH.tif")).write_bytes(b"not a GeoTIFF")  # only the S1 arm reads it
    path = tmp_path / "fail.yaml"
    path.write_text("study: fail\nablate:\n  data.modalities: [s2, s1]\nbase:\n  model: {fusion: vit, patch_size: 30, "
                    "depth: 1}\nresources: {cpu: 1}\n")
    summary = run_study(path, studies_dir=tmp_path / "studies", data=str(root), profile="quick", reports_dir=None)
    assert summary.ran == 2 and len(summary.failed) == 1 and not summary.interrupted, summary
    trials = optuna.load_study(study_name="fail", storage=open_storage(storage_url("fail", tmp_path / "studies"))
                               ).get_trials()
    assert sorted((t.user_attrs["arm"], t.state) for t in trials) == [
        ("data.modalities=s1", TrialState.FAIL), ("data.modalities=s2", TrialState.COMPLETE)]
    assert LOST_WORKER_RETRIES > 0
    errors = list((tmp_path / "studies" / "fail" / "ray").glob("*/*/error.txt"))
    assert len(errors) == 1 and errors[0].read_text().count("Failure #") == 1, \
        "Ray ran the failed trial again once, and that attempt stood down without an error"
