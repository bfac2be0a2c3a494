"""``mmvit-study run``: the arms × seeds of a study as Ray Tune trials, recorded in Optuna storage.

Storage is the single source of truth, so resuming is "run the same command again": trials
COMPLETE in storage are not run again; trials left RUNNING by a driver that died are marked
FAIL (``interrupted``) and re-run from their last epoch checkpoint, which lives under
``studies/<study>/checkpoints/<hash of the resolved trial config>/``; failed trials are re-run
with ``--retry-failed``. Each Ray trial records itself in storage (ask → per-epoch reports →
tell), which works the same for SQLite on one machine and PostgreSQL on a cluster.

This first runner covers the ablation grid; ``search:`` (Optuna samplers with ASHA inside an
arm) is refused until it lands.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mmvit.config import TrialConfig, set_dotted, trial_config
from mmvit.errors import SpecError, StudyError
from mmvit.study.plan import arms_of
from mmvit.study.spec import StudySpec, arm_name, load_spec
from mmvit.study.storage import ensure_study, open_storage, redact, storage_url

log = logging.getLogger(__name__)

QUICK_PROFILE: dict[str, Any] = {
    "train.epochs": 2,
    "train.batch_size": 32,
    "model.embed_dim": 64,
    "model.num_heads": 4,
    "data.num_workers": 0,
}
"""What the quick profile shrinks — never an axis the study ablates."""


@dataclass
class StudyJob:
    """Everything a Ray trial needs to train one (arm, seed) and record it (picklable)."""

    spec: StudySpec
    url: str
    profile: str
    data_root: str | None
    checkpoints: Path
    arms: list[dict[str, Any]] = field(default_factory=list)

    def resolve(self, arm: dict[str, Any], seed: int) -> TrialConfig:
        raw = json.loads(json.dumps(self.spec.base))
        if self.profile == "quick":
            for key, value in QUICK_PROFILE.items():
                if key not in self.spec.ablate:
                    set_dotted(raw, key, value)
        if self.data_root is not None:
            set_dotted(raw, "data.root", self.data_root)
        for key, value in arm.items():
            set_dotted(raw, key, value)
        raw["seed"] = seed
        set_dotted(raw, "train.metric", self.spec.metric)
        return trial_config(raw, source=f"arm {arm_name(arm)}")


def config_key(config: TrialConfig) -> str:
    return hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "ap_per_class"}


def run_trial(params: dict, job: StudyJob) -> None:
    """The Ray Tune function trainable: one (arm, seed), recorded in Optuna storage."""
    import torch
    from ray import tune

    from mmvit.data.loader import available_cpus
    from mmvit.train.loop import train_trial

    arm_index, seed = params["point"]
    arm = job.arms[arm_index]
    config = job.resolve(arm, seed)
    # Ray does not pin trials to cores: size torch's threads and the loader to the trial's share,
    # so concurrent trials don't fight over cores.
    cpus = max(1, int(job.spec.resources.cpu))
    torch.set_num_threads(cpus)
    if config.data.num_workers is None:
        config.data.num_workers = min(cpus - 1, available_cpus())
    study = optuna.load_study(study_name=job.spec.study, storage=open_storage(job.url))
    trial = study.ask()
    for key, value in {"arm": arm_name(arm), "arm_index": arm_index, "seed": seed,
                       "config": config.model_dump(mode="json"), "config_key": config_key(config)}.items():
        trial.set_user_attr(key, value)
    history: list[dict] = []
    metric = job.spec.metric

    def on_epoch(record, checkpoint_path) -> None:
        history.append({"epoch": record.epoch, "train_loss": record.train_loss,
                        **_scalars(record.validation)})
        trial.report(record.validation[metric], record.epoch)
        trial.set_user_attr("history", history)
        tune.report({metric: record.validation[metric], "epoch": record.epoch})

    try:
        result = train_trial(config, checkpoint_dir=job.checkpoints / config_key(config), on_epoch=on_epoch)
    except Exception as error:
        trial.set_user_attr("error", f"{type(error).__name__}: {error}")
        study.tell(trial, state=TrialState.FAIL)
        raise
    for key, value in {
        "validation": _scalars(result.validation), "test": _scalars(result.test),
        "ap_per_class_validation": result.validation["ap_per_class"],
        "ap_per_class_test": result.test["ap_per_class"], "best_epoch": result.best_epoch,
        "parameters": result.parameters, "samples_per_s": result.samples_per_s,
        "peak_memory_mb": result.peak_memory_mb, "wall_s": result.wall_s,
        "epochs_run": result.epochs_run, "device": result.device, "class_counts": result.class_counts,
    }.items():
        trial.set_user_attr(key, value)
    study.tell(trial, result.validation[metric])


@dataclass
class RunSummary:
    planned: int
    already_done: int
    ran: int
    failed: list[str]
    seconds: float


def remaining_points(study: optuna.Study, arms: list[dict], seeds: list[int], *,
                     retry_failed: bool) -> tuple[list[list[int]], int]:
    """Grid points still to run, and how many are already COMPLETE. RUNNING trials found here
    belong to a driver that is gone: they are marked FAIL (interrupted) and run again."""
    names = [arm_name(a) for a in arms]
    done, failed = set(), set()
    for trial in study.get_trials(deepcopy=False):
        point = (trial.user_attrs.get("arm"), trial.user_attrs.get("seed"))
        if trial.state == TrialState.COMPLETE:
            done.add(point)
        elif trial.state == TrialState.RUNNING:
            study._storage.set_trial_user_attr(trial._trial_id, "error", "interrupted: its driver stopped")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        elif trial.state == TrialState.FAIL and not retry_failed and \
                not str(trial.user_attrs.get("error", "")).startswith("interrupted"):
            failed.add(point)
    todo = [[i, seed] for i, name in enumerate(names) for seed in seeds
            if (name, seed) not in done and (name, seed) not in failed]
    return todo, len(done)


def run_study(path: Path, *, studies_dir: Path = Path("studies"), storage: str | None = None,
              data: str | None = None, profile: str | None = None, address: str | None = None,
              retry_failed: bool = False, verbose: bool = False) -> RunSummary:
    started = time.time()
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    spec = load_spec(path)
    if spec.search is not None:
        raise SpecError(f"{path}: `search:` is not supported by this runner yet; remove it to run the grid.")
    if data is None:
        from mmvit.data.demo import ensure_demo_archive

        archive = str(ensure_demo_archive())
        profile = profile or "quick"
        log.warning("No --data given: using the demo archive at %s (%s profile).", archive, profile)
    else:
        from mmvit.data.archive import open_archive

        archive = str(open_archive(data).root)
        profile = profile or "full"
    if profile not in ("quick", "full"):
        raise SpecError(f"--profile must be quick or full, but got {profile!r}.")
    url = storage_url(spec.study, studies_dir, storage)
    study, additions = ensure_study(open_storage(url), spec, source=str(path), archive=archive, profile=profile)
    if additions:
        log.warning("The study grows by %s.", ", ".join(additions))
    arms = arms_of(spec)
    job = StudyJob(spec, url, profile, data, (studies_dir / spec.study / "checkpoints").resolve(), arms)
    todo, done = remaining_points(study, arms, spec.seeds, retry_failed=retry_failed)
    planned = len(arms) * len(spec.seeds)
    if todo:
        _tune(job, todo, spec, studies_dir, address, verbose)
    failed = [f"{t.user_attrs.get('arm')} seed {t.user_attrs.get('seed')}: {t.user_attrs.get('error')}"
              for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if not str(t.user_attrs.get("error", "")).startswith("interrupted")]
    return RunSummary(planned, done, len(todo), failed, time.time() - started)


def _tune(job: StudyJob, todo: list[list[int]], spec: StudySpec, studies_dir: Path,
          address: str | None, verbose: bool) -> None:
    import ray
    from ray import tune

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=verbose,
                 logging_level=logging.INFO if verbose else logging.ERROR,
                 object_store_memory=None if address else 100 * 2**20)
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    available = ray.cluster_resources()
    if spec.resources.gpu > 0 and available.get("GPU", 0) < spec.resources.gpu:
        raise StudyError(f"Each trial asks for {spec.resources.gpu} GPU, but the Ray cluster has "
                         f"{available.get('GPU', 0):g}. Lower resources.gpu or join a cluster with GPUs (--address).")
    if available.get("CPU", 0) < spec.resources.cpu:
        raise StudyError(f"Each trial asks for {spec.resources.cpu:g} CPUs, but the Ray cluster has "
                         f"{available.get('CPU', 0):g}. Lower resources.cpu.")
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, job=job), resources),
        param_space={"point": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{spec.study}-{int(time.time())}",
                                  storage_path=str((studies_dir / spec.study / "ray").resolve()),
                                  verbose=1 if verbose else 0),
    )
    tuner.fit()


def status_rows(study_name: str, *, studies_dir: Path = Path("studies"), storage: str | None = None):
    """(arm, seed, state, validation metric, test metrics) per trial, from storage only."""
    url = storage_url(study_name, studies_dir, storage) if storage else \
        f"sqlite:///{(studies_dir / study_name / 'optuna.db').resolve()}"
    if storage is None and not (studies_dir / study_name / "optuna.db").is_file():
        raise StudyError(f"No study {study_name!r} in {studies_dir}: {studies_dir / study_name / 'optuna.db'} "
                         "does not exist. Pass --studies-dir or --storage.")
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    except KeyError:
        raise StudyError(f"The storage {redact(url)} has no study {study_name!r}.") from None
    return study, sorted(study.get_trials(deepcopy=False),
                         key=lambda t: (t.user_attrs.get("arm_index", 0), t.user_attrs.get("seed", 0), t.number))
