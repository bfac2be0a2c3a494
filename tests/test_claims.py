"""Heartbeats and claims (:mod:`mmvit.study.claims`) on SQLite and on a real PostgreSQL server:
a live driver's trials are never taken for a dead one's, a dead one's are, and a point of the
grid is held by one trial only — even when two drivers claim it at the same moment."""

from __future__ import annotations

import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from mmvit.storage import optuna_adapter
from mmvit.study import claims
from tests.pg_server import postgres_url  # noqa: F401 (the fixture)

GRACE = 2  # seconds without a heartbeat before a trial is stale, in these tests


@pytest.fixture(params=["sqlite", "postgresql"])
def study(request, tmp_path, monkeypatch) -> optuna.Study:
    url = f"sqlite:///{tmp_path / 'claims.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    monkeypatch.setattr(claims, "heartbeat_s", lambda: 1)
    monkeypatch.setattr(claims, "grace_s", lambda: GRACE)
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=GRACE)
    yield optuna.create_study(storage=storage, study_name=f"claims-{uuid.uuid4().hex[:8]}")
    storage.engine.dispose()


def attrs(driver: str, arm: str = "a", seed: int = 0) -> dict:
    return {"arm": arm, "seed": seed, "driver": driver, "config": {"model": {"depth": 1}}}


def state(study: optuna.Study, trial_id: int) -> TrialState:
    return optuna_adapter.study_storage(study).get_trial(trial_id).state


def test_a_claim_creates_the_trial_with_its_attributes_and_holds_the_point(study):
    first = claims.claim(study, attrs("driver-1"))
    trial = optuna_adapter.study_storage(study).get_trial(first)
    assert trial.state == TrialState.RUNNING
    assert trial.user_attrs == attrs("driver-1"), "the attributes arrive with the trial, not after it"
    assert claims.claim(study, attrs("driver-2")) is None, "a live trial holds its point"
    assert claims.claim(study, attrs("driver-2", seed=1)) is not None, "another point is free"
    assert len(study.get_trials()) == 2, "a refused claim leaves nothing in storage"


def test_a_live_driver_keeps_its_trials_and_a_dead_ones_are_taken_over(study):
    live = claims.claim(study, attrs("alive", arm="a"))
    dead = claims.claim(study, attrs("dead", arm="b"))
    with claims.Heartbeats(optuna_adapter.study_storage(study), (live,)):
        time.sleep(GRACE + 2)  # "dead" recorded its first heartbeat and no other
        assert [optuna_adapter.trial_id(t) for t in claims.stale_trials(study)] == [dead]
        assert [optuna_adapter.trial_id(t) for t in claims.fail_stale(study)] == [dead]
        assert state(study, live) == TrialState.RUNNING, "a live driver's trial is left alone"
        assert state(study, dead) == TrialState.FAIL
        assert optuna_adapter.study_storage(study).get_trial(dead).user_attrs["error"].startswith(claims.INTERRUPTED)
        taken_over = claims.claim(study, attrs("new", arm="b"))
        assert taken_over is not None, "the dead driver's point runs again"
        assert claims.claim(study, attrs("new", arm="a")) is None, "the live driver's point does not"
    time.sleep(GRACE + 2)  # the live driver's heartbeats stop: now it is stale too
    assert live in {optuna_adapter.trial_id(t) for t in claims.stale_trials(study)}


def test_a_trial_killed_before_its_first_heartbeat_goes_stale_after_the_grace_period(study):
    storage = optuna_adapter.study_storage(study)
    young = storage.create_new_trial(optuna_adapter.study_id(study))
    for key, value in attrs("x", arm="young").items():
        storage.set_trial_user_attr(young, key, value)
    assert claims.stale_trials(study) == [], "just created: its driver may be about to beat"
    time.sleep(GRACE + 1)
    assert [optuna_adapter.trial_id(t) for t in claims.stale_trials(study)] == [young]


def test_release_own_touches_only_this_drivers_trials(study):
    mine = claims.claim(study, attrs("me", arm="a"))
    theirs = claims.claim(study, attrs("them", arm="b"))
    assert claims.release_own(study, "me") == 1
    assert state(study, mine) == TrialState.FAIL and state(study, theirs) == TrialState.RUNNING


def test_of_two_simultaneous_claims_the_lower_number_keeps_the_point(study, monkeypatch):
    first = claims.claim(study, attrs("driver-1"))
    real = claims.holders
    calls = []

    def racing(study, point, *, before=None):  # the second driver's check ran before the first's insert
        calls.append(before)
        return [] if before is None else real(study, point, before=before)

    monkeypatch.setattr(claims, "holders", racing)
    assert claims.claim(study, attrs("driver-2")) is None
    assert calls[0] is None and calls[1] is not None, "it checked again after creating its trial"
    second = max(optuna_adapter.trial_id(t) for t in study.get_trials())
    assert state(study, first) == TrialState.RUNNING
    assert state(study, second) == TrialState.FAIL
    assert "another driver runs this point" in optuna_adapter.study_storage(study).get_trial(second).user_attrs["error"]


def test_a_complete_point_is_never_claimed_again(study):
    trial_id = claims.claim(study, attrs("driver-1"))
    optuna_adapter.study_storage(study).set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])
    assert claims.claim(study, attrs("driver-2")) is None


def test_another_drivers_live_search_trials_use_up_the_arms_budget(study):
    """Two drivers searching one arm run its `trials_per_arm` once between them."""
    from mmvit.study.search import prepare_arm_search, used_budget

    storage = optuna_adapter.study_storage(study)
    done = storage.create_new_trial(optuna_adapter.study_id(study))
    storage.set_trial_state_values(done, TrialState.COMPLETE, [0.3])
    other = storage.create_new_trial(optuna_adapter.study_id(study))  # the other driver's trial, beating
    with claims.Heartbeats(storage, (other,)):
        assert prepare_arm_search(study, retry_failed=False) == 2, "one done + one running live elsewhere"
        assert used_budget(study) == 2 and state(study, other) == TrialState.RUNNING
    time.sleep(GRACE + 2)  # that driver died
    assert prepare_arm_search(study, retry_failed=False) == 1, "its trial is interrupted and no longer counts"
    assert state(study, other) == TrialState.FAIL


def test_of_two_drivers_asking_an_arms_last_search_trial_at_once_the_lower_number_runs(study, monkeypatch):
    """Both drivers saw one trial of budget left; the one that asked second stands down, so the
    arm runs `trials_per_arm` trials, not one more."""
    from mmvit.study import search
    from mmvit.study.spec import parse_spec
    from mmvit.study.trial import StudyJob

    spec = parse_spec("study: race\nseeds: [0]\nsearch:\n  trials_per_arm: 2\n  params:\n"
                      "    train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n", check_models=False)
    job = StudyJob(spec, optuna_adapter.backend(optuna_adapter.study_storage(study)).url, "quick", None, "", spec.arms, driver="driver-2")
    with claims.Heartbeats(optuna_adapter.study_storage(study)) as heartbeats:
        arm_search = search.ArmSearch(job, {0: 1}, {0: 1}, heartbeats, per_arm=2)
        arm_study = arm_search.studies[0]
        storage = optuna_adapter.study_storage(arm_study)
        storage.set_trial_state_values(storage.create_new_trial(optuna_adapter.study_id(arm_study)), TrialState.COMPLETE, [0.3])
        real_next_arm = search.ArmSearch._next_arm
        first_driver: list[int] = []

        def racing(self):  # driver 1 asks its trial right after driver 2's budget check
            index = real_next_arm(self)
            if index is not None and not first_driver:
                first_driver.append(storage.create_new_trial(optuna_adapter.study_id(arm_study)))
                heartbeats.add(first_driver[0])
            return index

        monkeypatch.setattr(search.ArmSearch, "_next_arm", racing)
        assert arm_search.suggest("tune-trial-1") == search.Searcher.FINISHED
        trials = {optuna_adapter.trial_id(t): t for t in arm_study.get_trials()}
        second = max(trials)
        assert trials[first_driver[0]].state == TrialState.RUNNING, "the first asker keeps its trial"
        assert claims.was_interrupted(trials[second]) and "another driver took" in trials[second].user_attrs["error"]
        assert search.used_budget(arm_study) == 2 and arm_search.asked == {}
