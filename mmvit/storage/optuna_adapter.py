"""Every use of Optuna beyond its public API, in one place (tests/test_adapters.py is its contract).

Optuna has no public accessor for a few things a multi-driver study needs, so they are read here
and nowhere else:

* a study's storage and id, and a trial's storage id (``Study._storage``, ``Study._study_id``,
  ``FrozenTrial._trial_id`` / ``Trial._trial_id``): the public route, a query per trial
  (``get_trial_id_from_study_id_trial_number``), would cost a database round trip for each of
  the hundreds of trials a claim or a stale-trial scan looks at;
* which RUNNING trials have a stale heartbeat (``RDBStorage._get_stale_trial_ids``): the public
  ``optuna.storages.fail_stale_trials`` marks them FAIL at once, while a study must also know
  which ones to re-run and must not take a live trial of another driver;
* Optuna's own tables (``optuna.storages._rdb.models``): trials that never recorded a heartbeat,
  trials created with a token (:mod:`mmvit.storage.resilient`);
* the private ``RDBStorage`` methods that Optuna's storage cache calls (:data:`CACHE_CALLS`,
  :class:`CacheCallRoutes`), which a storage that retries lost connections must retry too.

When an Optuna release changes any of these, the contract test fails by name instead of resume,
claims or retries breaking silently.
"""

from __future__ import annotations

from typing import Any, Callable

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, Trial, TrialState

CACHE_CALLS = ("_get_trials", "_set_trial_param", "_get_best_trial_id", "_get_stale_trial_ids")
"""Private RDBStorage methods Optuna's ``_CachedStorage`` calls besides the public ones (and
``_create_new_trial``, which :class:`CacheCallRoutes` routes)."""


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (Optuna's cache around an RDBStorage)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: FrozenTrial | Trial) -> int:
    """A trial's id in storage (unique across studies; what every storage method takes)."""
    return trial._trial_id


def backend(storage: BaseStorage) -> BaseStorage:
    """The storage under Optuna's cache, or ``storage`` itself."""
    return getattr(storage, "_backend", storage)


def stale_trial_ids(storage: BaseStorage, study: int) -> list[int]:
    """RUNNING trials of study id ``study`` whose heartbeat is older than the storage's grace period."""
    return list(backend(storage)._get_stale_trial_ids(study))


def rdb_create_trial(storage: RDBStorage, study: int, template: FrozenTrial | None) -> FrozenTrial:
    """``RDBStorage``'s own trial creation, returning the stored trial (the cache's entry point)."""
    return RDBStorage._create_new_trial(storage, study, template)


def running_without_heartbeat(scoped_session: Callable[[], Any], study: int) -> set[int]:
    """Ids of the study's RUNNING trials without any heartbeat row (Optuna keeps heartbeats in a
    table of their own)."""
    from optuna.storages._rdb import models

    session = scoped_session()
    try:
        rows = (session.query(models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study, models.TrialModel.state == TrialState.RUNNING)
                .filter(~models.TrialModel.heartbeats.any()).all())
        return {row[0] for row in rows}
    finally:
        session.close()


def trials_with_system_attr(scoped_session: Callable[[], Any], study: int, key: str, value_json: str) -> list[int]:
    """Ids of the study's trials whose system attribute ``key`` is stored as ``value_json``, oldest first."""
    from optuna.storages._rdb import models

    session = scoped_session()
    try:
        rows = (session.query(models.TrialSystemAttributeModel.trial_id)
                .join(models.TrialModel, models.TrialModel.trial_id == models.TrialSystemAttributeModel.trial_id)
                .filter(models.TrialModel.study_id == study,
                        models.TrialSystemAttributeModel.key == key,
                        models.TrialSystemAttributeModel.value_json == value_json).all())
        return sorted(row[0] for row in rows)
    finally:
        session.close()


class CacheCallRoutes:
    """Mixed into an RDBStorage subclass: Optuna's cache creates trials through the private
    ``_create_new_trial``; here it reaches the subclass's ``create_frozen_trial``."""

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        return self.create_frozen_trial(study_id, template_trial)  # type: ignore[attr-defined]
