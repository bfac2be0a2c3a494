"""One study trial as a Ray Tune function trainable, recording itself in Optuna storage.

A *final* trial (an arm × seed of the table) asks its own Optuna trial in the main study and
tells it at the end, so exactly the grid points the driver hands out are recorded, whatever
happens to the driver. A *search* trial was asked by the driver's sampler
(:mod:`mmvit.study.search`); it records its configuration and per-epoch history, and the
driver tells it COMPLETE, PRUNED (ASHA) or FAIL; it trains on the study's search seed and
measures no test metrics. Checkpoints live under
``studies/<study>/checkpoints/<phase>/<hash of the resolved configuration>/`` (phase ``search`` or
``final``), so a re-run of the same configuration — after a crash, a kill or Ctrl-C — resumes from
its last finished epoch, and a final trial never starts from a search trial's weights. Once storage
holds a trial as finished, its resume state goes and its best weights stay
(:mod:`mmvit.study.checkpoints`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mmvit.config import TrialConfig
from mmvit.record_schema import StoredTrial, write_trial
from mmvit.storage import optuna_adapter
from mmvit.storage.connection import heartbeat_s, open_storage
from mmvit.storage.shared_path import join, trial_checkpoints
from mmvit.study.arms import Arm, ablated_keys
from mmvit.study.checkpoints import finish_trial, kept_bytes
from mmvit.study.claims import Heartbeats, claim, interrupt, stale_trials, was_interrupted
from mmvit.study.spec import StudySpec

QUICK_PROFILE: dict[str, Any] = {
    "train.epochs": 15,
    "train.batch_size": 16,
    "train.warmup_epochs": 2,
    "model.embed_dim": 64,
    "model.num_heads": 4,
    "data.num_workers": 0,
}
"""What the quick profile shrinks (budgets and width) — never a key a study ablates or searches.
Sized so that the models learn the demo archive (300 training patches) on 2 CPU cores: about
285 optimiser steps of 16 patches with a two-epoch warm-up, at width 64 (thesis lr and schedule).
At 12 epochs and a one-epoch warm-up the deepest dual encoders (SCT at depth 12: 24 blocks of
width 64) were still rising and two arms of depth.yaml ended at test AP macro 0.38–0.39."""

QUICK_FINAL_TRIALS = 15
"""The quick profile's budget of final trials: a study keeps as many of its paired seeds as fit,
but never fewer than :data:`QUICK_MIN_SEEDS` (a study's verdict is its paired test)."""

QUICK_MIN_SEEDS = 3
"""The fewest paired seeds a quick study keeps (all of the file's, if it has fewer): a paired
t-test needs three, and a report of one seed per arm is a ranking of noise. ``depth.yaml``'s 12
arms therefore run 36 trials, not 12."""

SMOKE_PROFILE: dict[str, Any] = {**QUICK_PROFILE, "train.epochs": 1, "train.warmup_epochs": 0,
                                  "data.max_train_patches": 128}
"""The smoke profile checks a study file end to end in minutes: one epoch on 128 patches, the
first seed only, at most :data:`SMOKE_SEARCH_TRIALS` search trials per arm."""

SMOKE_SEARCH_TRIALS = 2
PROFILES: dict[str, dict[str, Any]] = {"full": {}, "quick": QUICK_PROFILE, "smoke": SMOKE_PROFILE}

PROFILE_GROUPS = (("model.embed_dim", "model.num_heads"),)
"""Keys the profile changes together or not at all (``embed_dim % num_heads == 0``)."""


def profile_overrides(spec: StudySpec, profile: str) -> dict[str, Any]:
    """The profile's budgets minus every key the study varies (and its group)."""
    if not PROFILES[profile]:
        return {}
    varied = ablated_keys(spec.ablate) | set(spec.search.params if spec.search else ())
    for group in PROFILE_GROUPS:
        if varied & set(group):
            varied |= set(group)
    return {key: value for key, value in PROFILES[profile].items() if key not in varied}


def profile_plan(spec: StudySpec, profile: str) -> tuple[list[int], int]:
    """(seeds, search trials per arm) a profile runs: the smoke profile cuts both, the quick one
    keeps the first seeds that fit :data:`QUICK_FINAL_TRIALS` final trials, and at least
    :data:`QUICK_MIN_SEEDS` of them."""
    trials = spec.search.trials_per_arm if spec.search else 0
    if profile == "smoke":
        return spec.seeds[:1], min(trials, SMOKE_SEARCH_TRIALS)
    if profile == "quick":
        return spec.seeds[:max(QUICK_MIN_SEEDS, QUICK_FINAL_TRIALS // len(spec.arms))], trials
    return list(spec.seeds), trials


@dataclass
class StudyJob:
    """Everything a Ray trial needs to train one point and record it (picklable)."""

    spec: StudySpec
    url: str
    profile: str
    data_root: str | None
    checkpoints: str  # a folder or an object-store URI (mmvit.storage.shared_path)
    arms: list[Arm] = field(default_factory=list)
    driver: str = ""  # the id of the `mmvit-study run` process, on every trial it runs
    ray_results: str = ""  # Ray Tune's storage_path (next to the checkpoints)
    overrides: dict[str, Any] | None = None
    """The profile's settings, fixed by the driver (None: from ``profile``), so every worker
    trains what the driver planned."""
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    """Each trial's ``cpu`` and ``gpu`` in this run (a run-time choice: runner.trial_resources)."""

    def resolve(self, arm_index: int, seed: int, params: dict[str, Any] | None = None) -> TrialConfig:
        overrides = self.overrides if self.overrides is not None else profile_overrides(self.spec, self.profile)
        config = self.spec.resolve(self.arms[arm_index], seed, params=params, profile=overrides)
        if self.data_root is not None:
            config.data.root = self.data_root
        return config


def config_key(config: TrialConfig) -> str:
    """Identity of a resolved configuration: names its checkpoint folder."""
    return hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_folder(checkpoints: str, phase: str, config: TrialConfig) -> str:
    """``<checkpoints>/<phase>/<config key>``: search and final trials never share a checkpoint."""
    return join(str(checkpoints), phase, config_key(config))


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "ap_per_class"}


def _rss_mb() -> float | None:
    """Resident memory of this worker now: trials share reused workers, so growth shows a leak."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return None


def release_memory() -> None:
    """Ray reuses a worker for many trials: collect the last trial's cycles and hand glibc's
    freed arenas back to the system, so a long study's workers do not grow trial by trial."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _finite(values: list[float]) -> list[float | None]:
    """JSON has no NaN: a class without positives in a split has AP null."""
    return [None if v is None or math.isnan(v) else float(v) for v in values]


def placement() -> dict[str, Any]:
    """Where Ray put this trial: node, host and the GPU ids it was given (torch sees exactly
    those through ``CUDA_VISIBLE_DEVICES``, so ``cuda`` is the assigned device, never device 0
    of the node by habit)."""
    import socket

    import ray

    context = ray.get_runtime_context()
    return {"node": context.get_node_id(), "host": socket.gethostname(),
            "gpu_ids": [str(i) for i in context.get_accelerator_ids().get("GPU", [])],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def freeze_imports() -> None:
    """Once per worker, after the first trial's imports: everything imported lives as long as the
    worker, so keep it out of the full collection release_memory runs after every trial
    (0.25 s → 0.035 s per trial)."""
    import gc

    global _IMPORTS_FROZEN
    if not _IMPORTS_FROZEN:
        gc.freeze()
        _IMPORTS_FROZEN = True


_IMPORTS_FROZEN = False


def take_over_lost_attempt(study: optuna.Study, attrs: dict) -> bool:
    """Ray runs a final trial again when its worker was lost (its node went away, the process was
    killed; runner.LOST_WORKER_RETRIES): this driver's earlier attempt of the same Ray trial is
    still RUNNING in storage. Wait until its heartbeat is stale — nothing of it runs any more, so
    two attempts never write one checkpoint folder — and mark it interrupted, so that the claim
    takes the point over and training resumes from the attempt's last checkpoint. False when an
    earlier attempt failed for real (its training raised): that failure stands (``--retry-failed``
    runs it again), and the retry stands down."""
    while True:
        earlier = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL))
                   if (stored := StoredTrial.from_trial(t)).driver == attrs["driver"]
                   and stored.ray_trial == attrs["ray_trial"]]
        if any(t.state == TrialState.FAIL and not was_interrupted(t) for t in earlier):
            return False
        running = {optuna_adapter.trial_id(t) for t in earlier if t.state == TrialState.RUNNING}
        if not running:
            return True
        stale = running & {optuna_adapter.trial_id(t) for t in stale_trials(study)}
        for trial_id in stale:
            interrupt(optuna_adapter.study_storage(study), trial_id, "its worker was lost; Ray ran the trial again")
        if not stale:
            time.sleep(1)


def run_trial(config: dict[str, Any], job: StudyJob) -> None:
    """Ray Tune function trainable. ``config["point"]``: ``arm`` (index), ``seed``, ``params`` (searched
    values or None), ``search`` ([study name, Optuna trial id] for a search trial, else None)."""
    import torch
    from ray import tune

    import mmvit.train.loop  # noqa: F401  (imported before the freeze)
    from mmvit.data.loader import available_cpus

    freeze_imports()
    point = config["point"]
    arm_index, seed, params = point["arm"], point["seed"], point.get("params")
    config = job.resolve(arm_index, seed, params)
    # Ray does not pin trials to cores: size torch's threads (and the data path's) to the trial's share.
    torch.set_num_threads(max(1, min(int(job.resources["cpu"]), available_cpus())))
    storage = open_storage(job.url)
    arm = job.arms[arm_index]
    record = StoredTrial.start(
        **placement(), arm=arm.name, arm_index=arm_index, seed=seed, driver=job.driver,
        ray_trial=tune.get_context().get_trial_id(), heartbeat_s=heartbeat_s(), resources=dict(job.resources),
        phase="search" if point.get("search") else "final", config=config.model_dump(mode="json"),
        config_key=config_key(config), search_params=params or None, search_trial=point.get("search_trial"))
    attrs = record.to_attrs()
    if point.get("search"):
        trial_id, study = point["search"][1], None
        write_trial(storage, trial_id, record)
    else:
        study = optuna.load_study(study_name=job.spec.study, storage=storage)
        if not take_over_lost_attempt(study, attrs):  # Ray retried a trial whose training failed
            return
        trial_id = claim(study, attrs)
        if trial_id is None:  # COMPLETE, or another driver's live trial runs it
            return
    # A search trial's heartbeat comes from the driver that asked it (from ask to tell).
    with Heartbeats(storage, (trial_id,) if study is not None else ()):
        _train_and_record(config, job, storage, study, trial_id)


def _train_and_record(config: TrialConfig, job: StudyJob, storage, study: optuna.Study | None, trial_id: int) -> None:
    """Train, reporting each epoch to storage and Tune; record the results (a final trial —
    ``study`` given — also tells its state)."""
    from ray import tune

    from mmvit.train.loop import train_trial

    history: list[dict] = []
    metric = job.spec.metric
    final = study is not None  # search trials measure no test metrics (selection sees validation only)

    def entry(record) -> dict:
        return {"epoch": record.epoch, "train_loss": record.train_loss, "seconds": record.seconds,
                **_scalars(record.validation)}

    def on_resume(records) -> None:
        # The checkpoint may be an epoch ahead of storage (killed between the two writes):
        # its history is the truth, so no epoch's metrics are lost.
        history[:] = [entry(r) for r in records]
        write_trial(storage, trial_id, StoredTrial(resumed_from_epoch=len(records), history=history))

    def on_epoch(record, checkpoint_path) -> None:
        history.append(entry(record))
        value = record.validation[metric]
        if study is not None:  # a search trial's intermediate values are reported by the driver
            storage.set_trial_intermediate_value(trial_id, record.epoch, value)
        write_trial(storage, trial_id, StoredTrial(history=history))
        tune.report({metric: value, "epoch": record.epoch})

    phase = "final" if final else "search"
    remote = checkpoint_folder(job.checkpoints, phase, config)
    try:
        with trial_checkpoints(remote) as (folder, publish):
            def on_epoch_published(record, checkpoint_path) -> None:
                publish()  # before storage hears of the epoch: a resume finds every recorded epoch
                on_epoch(record, checkpoint_path)

            result = train_trial(config, checkpoint_dir=folder, on_epoch=on_epoch_published, on_resume=on_resume,
                                 test=final)
            publish()
            kept = kept_bytes(folder)
    except Exception as error:
        write_trial(storage, trial_id, StoredTrial(error=f"{type(error).__name__}: {error}"))
        if study is not None:
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        raise
    finally:
        release_memory()
    write_trial(storage, trial_id, StoredTrial(
        history=[entry(r) for r in result.history], validation=_scalars(result.validation),
        test=_scalars(result.test) if final else None,
        ap_per_class_test=_finite(result.test["ap_per_class"]) if final else None,
        ap_per_class_validation=_finite(result.validation["ap_per_class"]), best_epoch=result.best_epoch,
        parameters=result.parameters, samples_per_s=result.samples_per_s, peak_memory_mb=result.peak_memory_mb,
        wall_s=result.wall_s, epochs_run=result.epochs_run, device=result.device, precision=result.precision,
        class_counts=result.class_counts, worker_rss_mb=_rss_mb(), checkpoint_bytes=kept if final else None))
    if study is not None:
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [result.validation[metric]])
        finish_trial(remote)  # only now: a crash before the tell resumes from last.pt
