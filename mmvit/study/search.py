"""``search:`` — parameters tuned inside each arm by an Optuna sampler, with ASHA per arm.

Search trials train on the study's search seed (``search.seed``, never one of the final ``seeds``)
and measure no test metrics. Each arm has its own Optuna study (``<study>/search/<arm>``) in the
study's storage, asked and told by :class:`ArmSearch` (one Ray searcher for all arms, so all
arms search at once and the cluster stays busy). :class:`ArmASHA` keeps one ASHA bracket per arm:
a trial is only ever compared with trials of its own arm, so ASHA never cuts an arm.

An ASHA-stopped trial is recorded PRUNED, with ``pruned_at_epoch`` (not COMPLETE with a
truncated value). A COMPLETE trial's value is its validation metric at
the best epoch, as for the final trials.

Resume: trials a dead driver left RUNNING (heartbeat stale, :mod:`mmvit.study.claims`) are
marked FAIL (``interrupted``) and their parameters enqueued, so the next ask re-runs exactly that configuration, which finds its epoch
checkpoint; the sampler is reseeded with the number of trials already stored (the same seed
would repeat TPE's start-up configurations); the ASHA rungs are refilled from the stored
intermediate values, so cut-offs are those of an uninterrupted run. A second driver on the
same study counts the first one's live trials against each arm's budget, so the two together
run the budget once; when both ask an arm's last trial at the same moment, the trial with the
lower number runs and the other stands down (as final trials do, :func:`claims.claim`).
"""

from __future__ import annotations

import hashlib
import logging
from types import SimpleNamespace
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher

from mmvit.record_schema import StoredTrial, write_trial
from mmvit.storage import optuna_adapter
from mmvit.study.checkpoints import busy_keys, finish_trial
from mmvit.study.claims import Heartbeats, fail_stale, interrupt, live_running, was_interrupted
from mmvit.study.spec import SearchParam, StudySpec
from mmvit.study.trial import StudyJob, checkpoint_folder, config_key

log = logging.getLogger(__name__)


def search_study_name(spec: StudySpec, arm_name: str) -> str:
    return f"{spec.study}/search/{arm_name}"


def distribution(param: SearchParam) -> optuna.distributions.BaseDistribution:
    if param.type == "categorical":
        return CategoricalDistribution(param.choices)
    if param.type == "int":
        return IntDistribution(int(param.low), int(param.high), log=param.log)
    return FloatDistribution(param.low, param.high, log=param.log)


def make_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    search = spec.search
    if search.sampler == "grid":
        return optuna.samplers.GridSampler({k: p.choices for k, p in search.params.items()}, seed=seed)
    return {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "cmaes": optuna.samplers.CmaEsSampler, "nsga2": optuna.samplers.NSGAIISampler}[search.sampler](seed=seed)


def _sampler_seed(spec: StudySpec, arm_index: int, stored: int) -> int:
    """Distinct per study, arm and resume: a resumed search does not repeat its start-up draws."""
    text = f"{spec.study}/{arm_index}/{spec.seeds[0]}/{stored}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def counts_as_done(trial: optuna.trial.FrozenTrial, retry_failed: bool) -> bool:
    """A stored trial that uses up search budget: finished, or failed for real (unless retried)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state == TrialState.FAIL:
        return not (was_interrupted(trial) or StoredTrial.from_trial(trial).retried or retry_failed)
    return False


def prepare_arm_search(study: optuna.Study, retry_failed: bool) -> int:
    """Mark dead drivers' RUNNING trials interrupted and enqueue their parameters again (and
    those of failed trials with ``retry_failed``). Returns the trials that use up budget: done,
    or running live (in any driver)."""
    storage = optuna_adapter.study_storage(study)
    again = fail_stale(study)
    if retry_failed:
        again += [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if not StoredTrial.from_trial(t).retried and not was_interrupted(t)]
    for trial in again:
        if trial.params:
            write_trial(storage, optuna_adapter.trial_id(trial), StoredTrial(retried=True))
            study.enqueue_trial(trial.params, user_attrs=StoredTrial(resumes=trial.number).to_attrs(),
                                skip_if_exists=False)
    return used_budget(study, retry_failed)


def used_budget(study: optuna.Study, retry_failed: bool = False) -> int:
    """Trials done (see :func:`counts_as_done`) plus trials running live, in any driver."""
    return sum(counts_as_done(t, retry_failed) for t in study.get_trials(deepcopy=False)) + len(live_running(study))


def budget_ahead_of(study: optuna.Study, number: int) -> int:
    """Trials numbered below ``number`` that use up the arm's budget: done, running live, or
    waiting to be asked (an enqueued re-run). A total order, so of trials asked at the same
    moment by two drivers exactly the first ``trials_per_arm`` keep running."""
    live = {optuna_adapter.trial_id(t) for t in live_running(study)}
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number < number and (
        counts_as_done(t, retry_failed=False) or optuna_adapter.trial_id(t) in live or t.state == TrialState.WAITING))


class ArmSearch(Searcher):
    """One Optuna study per arm behind one Ray searcher, on Optuna's ask-and-tell interface;
    hands out each arm's remaining budget, the arm with the most left first. Before each ask
    the arm's budget is checked against storage, so trials another driver started meanwhile
    count too; the trials it asked carry this driver's id and its heartbeat until they are told."""

    def __init__(self, job: StudyJob, budgets: dict[int, int], seeds_stored: dict[int, int],
                 heartbeats: Heartbeats, per_arm: int) -> None:
        spec = job.spec
        super().__init__(metric=spec.metric, mode="max" if spec.direction == "maximize" else "min")
        from mmvit.storage.connection import open_storage

        self.space = {key: distribution(param) for key, param in spec.search.params.items()}
        self.job, self.budgets, self.heartbeats, self.per_arm = job, dict(budgets), heartbeats, per_arm
        self.studies = {
            index: optuna.create_study(study_name=search_study_name(spec, job.arms[index].name),
                                       storage=open_storage(job.url), direction=spec.direction, load_if_exists=True,
                                       sampler=make_sampler(spec, _sampler_seed(spec, index, seeds_stored[index])))
            for index in budgets
        }
        self.asked: dict[str, tuple[int, optuna.trial.Trial]] = {}  # Ray trial id → (arm, Optuna trial)
        self.told: set[str] = set()
        self.epochs: dict[str, int] = {}
        self.last_epoch: dict[str, int] = {}
        self.folders: dict[str, tuple[str, str]] = {}  # Ray trial id → (checkpoint folder, config key)

    def __getstate__(self) -> dict:
        # Tune pickles its searcher into the experiment state; the heartbeat thread stays here.
        return {**self.__dict__, "heartbeats": None}

    def _next_arm(self) -> int | None:
        while True:
            open_arms = [index for index, left in self.budgets.items() if left > 0]
            if not open_arms:
                return None
            index = max(open_arms, key=lambda i: (self.budgets[i], -i))
            if used_budget(self.studies[index]) < self.per_arm:
                return index
            self.budgets[index] = 0  # another driver ran or runs the rest of this arm's budget

    def suggest(self, trial_id: str) -> dict | str | None:
        while (index := self._next_arm()) is not None:
            study = self.studies[index]
            asked = study.ask(self.space)  # an enqueued re-run first, else the sampler's proposal
            stored_id = optuna_adapter.trial_id(asked)
            storage = optuna_adapter.study_storage(study)
            write_trial(storage, stored_id, StoredTrial(driver=self.job.driver))
            self.heartbeats.add(stored_id)
            self.budgets[index] -= 1
            if budget_ahead_of(study, asked.number) >= self.per_arm:
                # Another driver asked this arm's last trial at the same moment, and first.
                self.heartbeats.discard(stored_id)
                interrupt(storage, stored_id, "another driver took this arm's last search trial")
                self.budgets[index] = 0
                continue
            self.asked[trial_id] = (index, asked)
            seed = self.job.spec.search_seed  # never a final seed: finals train from scratch
            config = self.job.resolve(index, seed, asked.params)
            self.epochs[trial_id] = config.train.epochs
            self.folders[trial_id] = checkpoint_folder(self.job.checkpoints, "search", config), config_key(config)
            return {"point": {"arm": index, "seed": seed, "params": dict(asked.params),
                              "search": [study.study_name, stored_id]}}
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        epoch = int(result["epoch"])
        self.last_epoch[trial_id] = epoch
        self.asked[trial_id][1].report(result[self.metric], epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.told or trial_id not in self.asked:
            return
        self.told.add(trial_id)
        index, asked = self.asked[trial_id]
        study = self.studies[index]
        stored_id = optuna_adapter.trial_id(asked)
        if result and self.metric in result and int(result.get("epoch", 0)) > self.last_epoch.get(trial_id, 0):
            # Tune hands the result that made ASHA stop a trial only to on_trial_complete.
            self.on_trial_result(trial_id, result)
        last = self.last_epoch.get(trial_id, 0)
        storage = optuna_adapter.study_storage(study)
        try:
            if error:
                study.tell(asked, state=TrialState.FAIL)
            elif last < self.epochs[trial_id]:
                write_trial(storage, stored_id, StoredTrial(pruned_at_epoch=last))
                study.tell(asked, state=TrialState.PRUNED)
            else:
                stored = StoredTrial.from_trial(storage.get_trial(stored_id))
                value = (stored.validation or {}).get(self.metric, (result or {}).get(self.metric))
                study.tell(asked, value)
            if not error:
                self._drop_resume_state(study, trial_id)
        except Exception as failure:  # a finished trial, a NaN value: never lose the rest
            log.warning("Could not record search trial %s: %s", asked.number, failure)
        self.heartbeats.discard(stored_id)

    def _drop_resume_state(self, study: optuna.Study, trial_id: str) -> None:
        """After the tell, a finished search trial's last.pt is dead weight — unless a trial still
        running or waiting (a duplicate proposal, another driver's) has the same configuration."""
        folder, key = self.folders[trial_id]
        if key not in busy_keys(study):
            finish_trial(folder)


class ArmASHA(FIFOScheduler):
    """ASHA with one bracket per arm: trials compete only within their arm."""

    def __init__(self, job: StudyJob, *, grace_period: int, reduction_factor: float, max_t: int) -> None:
        super().__init__()
        mode = "max" if job.spec.direction == "maximize" else "min"
        self.metric_name = job.spec.metric
        self.per_arm: dict[int, ASHAScheduler] = {}
        self._make = lambda: ASHAScheduler(time_attr="epoch", metric=job.spec.metric, mode=mode, max_t=max_t,
                                           grace_period=grace_period, reduction_factor=reduction_factor,
                                           stop_last_trials=False)  # a finished trial records its results itself

    def _arm(self, index: int) -> ASHAScheduler:
        if index not in self.per_arm:
            self.per_arm[index] = self._make()
        return self.per_arm[index]

    def replay(self, index: int, study: optuna.Study) -> None:
        """Refill an arm's rungs from the intermediate values of its finished trials, through
        the scheduler's own hooks: each stored trial is added, reports its epochs, and leaves."""
        scheduler = self._arm(index)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            ghost = SimpleNamespace(trial_id=f"stored-{trial.number}")
            scheduler.on_trial_add(None, ghost)
            for epoch, value in sorted(trial.intermediate_values.items()):
                scheduler.on_trial_result(None, ghost, {"epoch": epoch, self.metric_name: value})
            scheduler.on_trial_remove(None, ghost)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    @staticmethod
    def _index(trial) -> int:
        return int(trial.config["point"]["arm"])

    def on_trial_add(self, tune_controller, trial) -> None:
        self._arm(self._index(trial)).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._arm(self._index(trial)).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._arm(self._index(trial)).on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._arm(self._index(trial)).on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._arm(self._index(trial)).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"arm {i}: {s.debug_string()}" for i, s in sorted(self.per_arm.items()))


def best_params(study: optuna.Study) -> dict[str, Any] | None:
    """Parameters of the arm's best COMPLETE search trial (validation only), or None."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        return None
    best = (max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min)(complete, key=lambda t: t.value)
    return dict(best.params)


__all__ = ["ArmASHA", "ArmSearch", "best_params", "prepare_arm_search", "search_study_name", "used_budget"]
