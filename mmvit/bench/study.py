"""Study-runner overhead: a 12-trial demo study's wall time against the trials' own time.

ideal = Σ (each trial's own wall time, from storage) ÷ concurrency; ratio = study wall ÷ ideal.
Everything the runner adds — Ray start, scheduling, storage writes, actor start-up, the tail
where fewer trials than slots are left — shows up in the ratio (1.00 = no overhead).

The baseline beside it is bare Ray Tune given the same trial durations: trials that only import
what a real trial imports (torch, timm) and sleep for as long as the study's trials trained.
What Ray and the imports cost is the floor of any runner built on Ray Tune; the rest is ours.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

STUDY = """\
study: bench
ablate:
  model.fusion: [early, sct, modality_token, channel_token]
  model.depth: [1, 2, 3]
seeds: [0]
base:
  model: {{patch_size: 30, embed_dim: 32, num_heads: 2}}
  train: {{epochs: {epochs}, batch_size: 32}}
  data: {{num_workers: 0}}
resources: {{cpu: {cpu}}}
"""


@dataclass
class StudyBenchmark:
    trials: int
    concurrency: int
    wall_s: float
    trial_s: list[float]
    first_start_s: float
    """From the start to the first trial's start (spec checks, Ray, the study, an actor, imports)."""
    tail_s: float
    """From the last trial's end to the end (shutdown)."""
    gaps_s: float
    """Σ over trials of the time between a trial's Optuna start and its training start."""

    @property
    def ideal_s(self) -> float:
        return sum(self.trial_s) / self.concurrency

    @property
    def ratio(self) -> float:
        return self.wall_s / self.ideal_s


def run_study_benchmark(epochs: int = 6, cpu: float = 1.0, data: str | None = None) -> StudyBenchmark:
    """Run the 12-arm study in a fresh folder and time ``run_study`` end to end, exactly as
    ``mmvit-study run`` calls it (spec checks, Ray start and shutdown included)."""
    from mmvit.data.loader import available_cpus
    from mmvit.record_schema import StoredTrial
    from mmvit.study.runner import run_study
    from mmvit.storage.connection import open_storage, storage_url

    if data is None:
        from mmvit.data.demo import ensure_demo_archive

        data = str(ensure_demo_archive())
    slots = max(1, int(available_cpus() // cpu))  # what a private local Ray offers
    with tempfile.TemporaryDirectory(prefix="mmvit-bench-study-") as folder:
        path = Path(folder) / "bench.yaml"
        path.write_text(STUDY.format(epochs=epochs, cpu=cpu))
        studies = Path(folder) / "studies"
        started, epoch_started = time.perf_counter(), time.time()
        run_study(path, studies_dir=studies, data=data, profile="full", reports_dir=None)
        wall = time.perf_counter() - started
        study = optuna.load_study(study_name="bench", storage=open_storage(storage_url("bench", studies)))
        trials = study.get_trials(states=(TrialState.COMPLETE,))
        starts = [t.datetime_start.timestamp() for t in trials]
        ends = [t.datetime_complete.timestamp() for t in trials]
        own = [StoredTrial.from_trial(t).wall_s for t in trials]
        gaps = sum(end - start - w for start, end, w in zip(starts, ends, own))
        return StudyBenchmark(len(trials), slots, wall, own, min(starts) - epoch_started,
                              epoch_started + wall - max(ends), gaps)


def _sleeping_trial(config: dict) -> None:
    import timm.layers  # noqa: F401 — what every real trial imports before it trains (torch with it)
    from ray import tune

    time.sleep(config["seconds"])
    tune.report({"slept": config["seconds"]})


def run_tune_floor(seconds: list[float], concurrency: int) -> float:
    """Wall time of bare Ray Tune (a lean local start, ``concurrency`` one-CPU slots, actors
    reused, longest first) running trials that import torch and timm and sleep ``seconds``."""
    import ray
    from ray import tune

    started = time.perf_counter()
    ray.init(address="local", num_cpus=concurrency, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, object_store_memory=100 * 2**20)
    try:
        with tempfile.TemporaryDirectory(prefix="mmvit-bench-floor-") as folder:
            tune.Tuner(tune.with_resources(_sleeping_trial, {"cpu": 1}),
                       param_space={"seconds": tune.grid_search(sorted(seconds, reverse=True))},
                       tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
                       run_config=tune.RunConfig(storage_path=folder, verbose=0)).fit()
    finally:
        ray.shutdown()
    return time.perf_counter() - started
