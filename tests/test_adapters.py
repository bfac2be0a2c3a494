"""Contract tests of the one place that uses Optuna beyond its public API
(:mod:`mmvit.storage.optuna_adapter`) and of the Ray Tune hooks the per-arm search relies on.

Each test states what the adapter assumes of the library, against the public API where one
exists, so an Optuna or Ray release that changes it fails here by name instead of breaking
resume, claims or storage retries silently."""

from __future__ import annotations

import inspect
import json
import re
import time
from types import SimpleNamespace

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler

from mmvit.storage import optuna_adapter
from mmvit.storage.resilient import ResilientStorage


@pytest.fixture
def storage(tmp_path):
    return RDBStorage(f"sqlite:///{tmp_path / 'contract.db'}", heartbeat_interval=1, grace_period=1)


def test_a_studys_storage_and_id_are_those_the_public_api_names(storage):
    study = optuna.create_study(study_name="contract", storage=storage)
    assert optuna_adapter.backend(optuna_adapter.study_storage(study)) is storage
    assert optuna_adapter.study_id(study) == storage.get_study_id_from_name("contract")


def test_a_trials_id_is_the_storage_id_of_its_number(storage):
    study = optuna.create_study(study_name="contract", storage=storage)
    asked = study.ask()
    study.tell(asked, 0.5)
    second = study.ask()
    public = storage.get_trial_id_from_study_id_trial_number
    study_id = storage.get_study_id_from_name("contract")
    assert optuna_adapter.trial_id(second) == public(study_id, second.number)
    for frozen in study.get_trials(deepcopy=False):
        assert optuna_adapter.trial_id(frozen) == public(study_id, frozen.number)


def test_stale_trial_ids_are_running_trials_whose_heartbeat_outlived_the_grace_period(storage):
    study = optuna.create_study(study_name="contract", storage=storage)
    cache = optuna_adapter.study_storage(study)
    old, fresh, finished = (optuna_adapter.trial_id(study.ask()) for _ in range(3))
    for trial_id in (old, finished):
        storage.record_heartbeat(trial_id)
    storage.set_trial_state_values(finished, TrialState.COMPLETE, [0.1])
    time.sleep(2.2)  # SQLite's clock counts whole seconds
    storage.record_heartbeat(fresh)
    assert optuna_adapter.stale_trial_ids(cache, optuna_adapter.study_id(study)) == [old]


def test_optunas_tables_answer_the_raw_queries(storage):
    study = optuna.create_study(study_name="contract", storage=storage)
    silent, beating = (optuna_adapter.trial_id(study.ask()) for _ in range(2))
    storage.record_heartbeat(beating)
    study_id = optuna_adapter.study_id(study)
    assert optuna_adapter.running_without_heartbeat(storage.scoped_session, study_id) == {silent}
    storage.set_trial_system_attr(beating, "mmvit:creation", "token-1")
    found = optuna_adapter.trials_with_system_attr(storage.scoped_session, study_id, "mmvit:creation",
                                                   json.dumps("token-1"))
    assert found == [beating]


def test_optunas_cache_calls_exactly_the_private_methods_the_adapter_routes():
    """The cache around an RDBStorage calls these private methods of it; a retrying storage
    must retry every one (a new one would go unretried: this test names it)."""
    import optuna.storages._cached_storage as cached

    called = set(re.findall(r"self\._backend\.(_\w+)", inspect.getsource(cached)))
    assert called == set(optuna_adapter.CACHE_CALLS) | {"_create_new_trial"}
    for name in called:
        assert callable(getattr(RDBStorage, name)), name


def test_trials_a_study_asks_through_the_cache_are_created_by_the_retrying_storage(tmp_path, monkeypatch):
    storage = ResilientStorage(f"sqlite:///{tmp_path / 'contract.db'}")
    created = []
    real = ResilientStorage.create_frozen_trial

    def spy(self, study_id, template_trial=None):
        created.append(study_id)
        return real(self, study_id, template_trial)

    monkeypatch.setattr(ResilientStorage, "create_frozen_trial", spy)
    study = optuna.create_study(study_name="contract", storage=storage)
    trial = study.ask()
    assert created == [optuna_adapter.study_id(study)]
    stored = storage.get_trial(optuna_adapter.trial_id(trial))
    assert "mmvit:creation" in stored.system_attrs  # the token a retried creation is found by


def test_ashas_public_hooks_replay_stored_results_into_its_rungs():
    """ArmASHA refills an arm's rungs from stored trials through ASHA's own hooks (add, result,
    remove) with a stand-in that has only a ``trial_id``: a new trial below the replayed rung
    is then stopped, one above it continues."""
    from mmvit.study.search import ArmASHA

    job = SimpleNamespace(spec=SimpleNamespace(metric="ap_macro", direction="maximize"))
    scheduler = ArmASHA(job, grace_period=1, reduction_factor=2, max_t=4)
    stored = [SimpleNamespace(number=n, intermediate_values={1: value})
              for n, value in enumerate((0.50, 0.60, 0.70, 0.80))]
    study = SimpleNamespace(get_trials=lambda deepcopy, states: stored)
    scheduler.replay(0, study)

    def live(name: str, value: float) -> str:
        trial = SimpleNamespace(trial_id=name, config={"point": {"arm": 0}})
        scheduler.on_trial_add(None, trial)
        return scheduler.on_trial_result(None, trial, {"epoch": 1, "ap_macro": value})

    assert live("weak", 0.40) == TrialScheduler.STOP
    assert live("strong", 0.90) == TrialScheduler.CONTINUE
    assert scheduler.per_arm.keys() == {0}
