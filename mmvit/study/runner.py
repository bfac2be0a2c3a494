"""``mmvit-study run``: a study file → Ray Tune trials → records in Optuna storage.

Storage is the single source of truth, so resuming is "run the same command again" (Ray's
``Tuner.restore`` is not used: with OptunaSearch it crashes on a stale experiment snapshot or
repeats configurations). What is COMPLETE in storage is never run again; trials a dead driver
left RUNNING are marked interrupted and re-run from their last epoch checkpoint; failed trials
are re-run with ``--retry-failed``.

A study runs in two phases. With ``search:``, every arm first tunes its parameters
(:mod:`mmvit.study.search`: one Optuna study per arm, ASHA per arm); then the *final* phase
trains every arm × seed — with the arm's best searched parameters — to full length, and those
trials, in the main Optuna study, make the tables.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import optuna
from optuna.trial import TrialState

from mmvit.errors import SpecError, StudyError
from mmvit.record_schema import (SCHEMA_VERSION, StoredArm, StoredSearchStudy, StoredStudy, StoredTrial,
                                 write_study)
from mmvit.study.arms import Arm, comparisons
from mmvit.study.checkpoints import record_disk, search_complete, tidy_search
from mmvit.study.cluster import use_cluster_token
from mmvit.study.claims import (Heartbeats, fail_stale, live_running, new_driver_id, release_own,
                                 was_interrupted)
from mmvit.storage.paths import StudyPaths
from mmvit.study.plan import choose_profile, data_source
from mmvit.storage.resilient import raise_if_storage_lost
from mmvit.study.search import best_params, prepare_arm_search, search_study_name
from mmvit.study.spec import StudyFile, StudySpec, read_study
from mmvit.study.stopping import StopRequest, keep_stop_handlers
from mmvit.storage.connection import heartbeat_s, open_storage, redact
from mmvit.study.storage import ensure_study
from mmvit.study.trial import (PROFILES, QUICK_PROFILE, StudyJob, config_key, profile_overrides,  # noqa: F401
                               profile_plan, run_trial)

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    planned: int
    already_done: int
    ran: int
    failed: list[str]
    seconds: float
    interrupted: int = 0
    search_trials: int = 0
    unsearched_arms: tuple[str, ...] = ()
    report: Path | None = None
    by_others: int = 0
    """Final trials another driver on the same study completed while this one ran."""
    left: int = 0
    """Planned final trials neither complete nor failed when this driver returned (Ctrl-C)."""
    stopped: bool = False
    """The user stopped this run (Ctrl-C) before the study was done."""


def resolve_data(data: str | None, spec: StudySpec, profile: str | None) -> tuple[str | None, str, str]:
    """(data root for the trials, archive identity, profile). ``--data`` > ``$MMVIT_DATA`` >
    ``data.root`` in the study file > the demo archive (quick profile unless told otherwise)."""
    profile = choose_profile(spec, profile, data)
    data = data_source(spec, data)
    if data is None:
        from mmvit.data.demo import ensure_demo_archive

        archive = str(ensure_demo_archive())
        log.warning("No --data, $MMVIT_DATA or data.root: using the demo archive at %s (%s profile).",
                    archive, profile)
        return None, archive, profile
    from mmvit.data.archive import open_archive

    archive = str(Path(open_archive(data).root).resolve())  # Ray trials run in another folder
    return archive, archive, profile


def archive_presence(root: str, *, require_complete: bool = False) -> dict[str, list[int]]:
    """``{split: [present, listed]}`` of the study's archive, recorded with the study (the report
    shows it beside the archive): a partial archive trains on the patches present.
    ``require_complete`` refuses a partial archive before any trial starts."""
    from mmvit.data.archive import open_archive
    from mmvit.data.splits import SPLITS

    archive = open_archive(root, require_complete=require_complete)
    counts = {split: archive.presence(split) for split in SPLITS}
    return {split: [p.present, p.listed] for split, p in counts.items()}


def baseline_index(spec: StudySpec, job: StudyJob) -> int | None:
    """The arm whose configuration equals ``base``, if any: an arm list's default baseline."""
    base = job.spec.resolve(Arm("base"), spec.seeds[0]).model_dump()
    for index, arm in enumerate(job.arms):
        if job.spec.resolve(arm, spec.seeds[0]).model_dump() == base:
            return index
    return None


def record_identity(study: optuna.Study, job: StudyJob) -> None:
    """What the report needs beyond the spec: arms with labels, class names, and per arm what its
    Δ is against (``compare_with``, along ``axis``; ``baseline``: the study's overall reference).
    Recorded on every run, so an edited ``baseline:`` (not identity) reaches the next report."""
    from mmvit.data.labels import LABELS_19

    default = None
    if isinstance(job.spec.ablate, list):
        index = baseline_index(job.spec, job)
        default = job.arms[index].name if index is not None else None
    compared = comparisons(job.spec.ablate, job.spec.baseline, default=default)
    arms = [StoredArm(arm.name, arm.labels, arm.settings, baseline=compared[arm.name].compare_with is None,
                      compare_with=compared[arm.name].compare_with, axis=compared[arm.name].axis)
            for arm in job.arms]
    write_study(study, StoredStudy(  # the schema too: a study stored before it had a number now says 1
        schema=SCHEMA_VERSION, arms=arms, labels=list(LABELS_19),
        planned_seeds=profile_plan(job.spec, job.profile)[0],
        search_studies=[search_study_name(job.spec, a.name) for a in job.arms] if job.spec.search else [],
        reference=job.spec.reference.model_dump(mode="json") if job.spec.reference else None))


def remaining_points(study: optuna.Study, arms: list[Arm], seeds: list[int], *,
                     retry_failed: bool) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """(points to run, points a live trial of another driver runs, points COMPLETE) of the final
    phase; dead drivers' trials are marked interrupted first."""
    fail_stale(study)
    done, failed = set(), set()
    for trial in study.get_trials(deepcopy=False):
        point = StoredTrial.from_trial(trial).point
        if trial.state == TrialState.COMPLETE:
            done.add(point)
        elif trial.state == TrialState.FAIL and not retry_failed and not was_interrupted(trial):
            failed.add(point)
    running = {StoredTrial.from_trial(t).point for t in live_running(study)}
    todo, elsewhere = [], []
    for index, arm in enumerate(arms):
        for seed in seeds:
            point = (arm.name, seed)
            if point in running and point not in done:
                elsewhere.append((index, seed))
            elif point not in done and point not in failed:
                todo.append((index, seed))
    return todo, elsewhere, len(done)


def longest_first(job: StudyJob, todo: list[tuple[int, int]], params: dict) -> list[tuple[int, int]]:
    """Start the most expensive trials first (parameters × tokens × epochs, from models built on
    the meta device), so the study does not end with one slot running a long trial alone."""
    from mmvit.study.shapes import model_shape

    cost: dict[int, float] = {}
    for index in {i for i, _ in todo}:
        config = job.resolve(index, job.spec.seeds[0], params.get(index))
        shape = model_shape(config)
        cost[index] = shape.parameters * shape.tokens * config.train.epochs
    return sorted(todo, key=lambda point: -cost[point[0]])


def failures(study: optuna.Study) -> list[str]:
    """``arm seed N: error`` of each final point whose last attempt failed (and none completed)."""
    trials = [(t, StoredTrial.from_trial(t)) for t in study.get_trials(deepcopy=False)]
    complete = {stored.point for t, stored in trials if t.state == TrialState.COMPLETE}
    return [f"{stored.arm} seed {stored.seed}: {stored.error}" for t, stored in trials
            if t.state == TrialState.FAIL and not was_interrupted(t) and stored.point not in complete]


def failed_before_storage(grid, job: StudyJob, study: optuna.Study) -> dict[tuple[str, int], str]:
    """Final trials that raised before they had a trial in storage (a node that cannot reach the
    database, say): ``(arm, seed) → error``. They are not run again by this driver — the loop
    would retry them forever — and the summary names them."""
    stored = {record.point for t in study.get_trials(deepcopy=False)
              if (record := StoredTrial.from_trial(t)).driver == job.driver}
    out = {}
    for result in grid:
        point = (result.config or {}).get("point")
        if result.error is None or point is None:
            continue
        key = (job.arms[point["arm"]].name, point["seed"])
        if key not in stored:
            error = getattr(result.error, "cause", None) or result.error
            out[key] = (f"{type(error).__name__}: {str(error).strip().splitlines()[-1]} "
                        "(before the trial reached the study storage; run again to retry)")
    return out


@contextmanager
def ray_session(address: str | None, verbose: bool) -> Iterator[None]:
    """Join ``address`` or start a lean local Ray (no dashboard, small object store)."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no config box: the progress view is ours
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if not verbose:  # a failed trial's traceback is in storage and in the summary, not on the console
        logging.getLogger("ray").setLevel(logging.CRITICAL)
    started = not ray.is_initialized()
    if started:
        use_cluster_token(address)
        # Without --address (or $RAY_ADDRESS) a private local Ray, even if `ray start` runs here.
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        # A cluster's workers were started by `ray start`, not from this shell: hand them this
        # driver's MMVIT_* settings (cache folder, heartbeat interval) so both sides agree.
        settings = {key: value for key, value in os.environ.items() if key.startswith("MMVIT_")}
        try:
            with keep_stop_handlers():
                ray.init(address=address, include_dashboard=False, log_to_driver=verbose,
                         logging_level=logging.INFO if verbose else logging.CRITICAL,
                         object_store_memory=100 * 2**20 if address == "local" else None,
                         runtime_env={"env_vars": settings} if settings and address != "local" else None)
        except (ConnectionError, RuntimeError) as error:
            raise StudyError(
                f"Cannot join the Ray cluster at {address} ({type(error).__name__}: {str(error).splitlines()[0]}). "
                "Start one with `ray start --head` and pass the address it prints (or `--address auto` on a "
                "node of the cluster); a cluster with token authentication needs its token on this machine "
                "(~/.ray/auth_token from the head, or $RAY_AUTH_TOKEN).") from None
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def trial_resources(spec: StudySpec, cpus: float | None = None, gpus: float | None = None) -> dict[str, float]:
    """Each trial's ``cpu`` and ``gpu`` in this run (a run-time choice, not the study's identity):
    ``--cpus-per-trial`` / ``--gpus-per-trial``, else the file's ``resources:``, else chosen from the
    Ray cluster: one GPU per trial when a node has GPUs, with a fair share of its node's CPUs
    (the fewest any GPU node offers), and one CPU per trial on a CPU-only cluster, so its cores
    run trials side by side."""
    import ray

    if cpus is not None and not cpus > 0:
        raise SpecError(f"--cpus-per-trial must be > 0, but got {cpus:g}.")
    if gpus is not None and not gpus >= 0:
        raise SpecError(f"--gpus-per-trial must be >= 0, but got {gpus:g}.")
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    gpu = gpus if gpus is not None else spec.resources.gpu
    if gpu is None:
        gpu = 1.0 if any(n.get("GPU", 0) >= 1 for n in nodes) else 0.0
    cpu = cpus if cpus is not None else spec.resources.cpu
    if cpu is None:
        # Trials per node = its GPUs ÷ gpu; each gets its share of the node's CPUs (whole CPUs, or
        # a fraction where a node has fewer CPUs than GPU slots: the GPUs are what must stay busy).
        shares = [n.get("CPU", 0) / math.floor(n["GPU"] / gpu + 1e-9)
                  for n in nodes if gpu > 0 and n.get("GPU", 0) >= gpu]
        share = min(shares) if shares else 1.0
        cpu = float(math.floor(share)) if share >= 1 else share
    return {"cpu": float(cpu), "gpu": float(gpu)}


def describe_resources(resources: dict[str, float]) -> str:
    """``1 GPU + 8 CPU per trial`` — the view's title and the log say what this run uses."""
    gpu = f"{resources['gpu']:g} GPU + " if resources["gpu"] else ""
    return f"{gpu}{resources['cpu']:g} CPU per trial"


def check_resources(resources: dict[str, float]) -> None:
    """A request the cluster can never meet would wait forever without a word: refuse it."""
    import ray

    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    gpu, cpu = resources["gpu"], resources["cpu"]
    if gpu > 0 and not any(n.get("GPU", 0) >= gpu for n in nodes):  # one trial lives on one node
        raise StudyError(f"Each trial asks for {gpu:g} GPU (--gpus-per-trial or resources.gpu), but no node of "
                         f"the Ray cluster has that many ({total.get('GPU', 0):g} GPU in all). Ask for fewer, "
                         "or join a cluster with GPUs (--address).")
    if not any(n.get("CPU", 0) >= cpu for n in nodes):
        raise StudyError(f"Each trial asks for {cpu:g} CPUs (--cpus-per-trial or resources.cpu), but the largest "
                         f"node of the Ray cluster has {max((n.get('CPU', 0) for n in nodes), default=0):g}. "
                         "Ask for fewer.")


def warn_unshared(storage_path: str | None) -> None:
    """Checkpoints under --studies-dir sit on each node's own disk: say so on a multi-node cluster."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if storage_path is None and len(nodes) > 1:
        log.warning("The Ray cluster has %d nodes, but checkpoints and Ray results go to --studies-dir on "
                    "each node's own disk: a trial resumed on another node starts again from epoch 0. Pass "
                    "--storage-path with a folder every node mounts (or an s3:// / gs:// URI).", len(nodes))


LOST_WORKER_RETRIES = 3
"""How often Ray starts a final trial again after its worker was lost (its node went away, the
process was killed): the retry, on any live node, takes its lost attempt's point over and resumes
from the last epoch checkpoint (trial.take_over_lost_attempt). A trial whose training raised is
retried too, but stands down at once: its failure stands."""


def _tuner(job: StudyJob, phase: str, verbose: bool, max_failures: int = 0, **tune_kwargs):
    from ray import tune

    spec = job.spec
    param_space = tune_kwargs.pop("param_space", None)
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, job=job), dict(job.resources)),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent, reuse_actors=True, **tune_kwargs),
        run_config=tune.RunConfig(name=f"{spec.study}-{phase}-{int(time.time())}",
                                  storage_path=job.ray_results,
                                  failure_config=tune.FailureConfig(max_failures=max_failures),
                                  verbose=1 if verbose else 0),
    )


def run_search(job: StudyJob, retry_failed: bool, verbose: bool, stop: StopRequest) -> tuple[int, int]:
    """Tune every arm's searched parameters, the budget another driver runs left out. Returns
    (search trials this driver finished, its trials left unfinished: Ctrl-C or a lost worker)."""
    from mmvit.study.search import ArmASHA, ArmSearch

    spec, storage = job.spec, open_storage(job.url)
    per_arm = profile_plan(spec, job.profile)[1]
    budgets, stored, studies = {}, {}, {}
    for index, arm in enumerate(job.arms):
        study = optuna.create_study(storage=storage, study_name=search_study_name(spec, arm.name),
                                    direction=spec.direction, load_if_exists=True)
        write_study(study, StoredSearchStudy.of(spec.study, arm.name, index))
        used = prepare_arm_search(study, retry_failed)
        stored[index], studies[index] = len(study.trials), study
        if per_arm > used:
            budgets[index] = per_arm - used
    total = sum(budgets.values())
    if not total:
        return 0, 0
    scheduler = None
    if spec.search.asha is not None:
        epochs = job.resolve(0, spec.seeds[0]).train.epochs
        asha = spec.search.asha
        scheduler = ArmASHA(job, grace_period=min(asha.grace_period, epochs), reduction_factor=asha.reduction_factor,
                            max_t=min(asha.max_t or epochs, epochs))
        for index in budgets:
            scheduler.replay(index, studies[index])
    with Heartbeats(storage) as heartbeats:
        tuner = _tuner(job, "search", verbose, scheduler=scheduler, num_samples=total,
                       search_alg=ArmSearch(job, budgets, stored, heartbeats, per_arm))
        if stop.requested:  # a Ctrl-C while the arms were prepared: no fit was running to hear it
            return 0, 0
        grid = tuner.fit()
    released = sum(release_own(study, job.driver) for study in studies.values())
    raise_if_storage_lost(grid)
    return sum(finished_by(study, job.driver) for study in studies.values()), released


def finished_by(study: optuna.Study, driver: str) -> int:
    """Trials ``driver`` ran to an end of their own (COMPLETE, PRUNED, or failed for real)."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if StoredTrial.from_trial(t).driver == driver and t.state.is_finished()
               and not was_interrupted(t))


def search_studies(job: StudyJob) -> list[optuna.Study]:
    """The arms' search studies that exist in storage (none without ``search:``)."""
    if not job.spec.search:
        return []
    storage = open_storage(job.url)
    names = set(optuna.get_all_study_names(storage))
    return [optuna.load_study(study_name=name, storage=storage)
            for name in (search_study_name(job.spec, arm.name) for arm in job.arms) if name in names]


def searched_parameters(job: StudyJob) -> tuple[dict[int, dict], set[int], list[str]]:
    """(best parameters of each arm whose search is over, arms another driver still searches,
    names of arms whose search ended without a COMPLETE trial)."""
    params, busy, unsearched = {}, set(), []
    for index, arm in enumerate(job.arms):
        study = optuna.load_study(study_name=search_study_name(job.spec, arm.name), storage=open_storage(job.url))
        if live_running(study):
            busy.add(index)
            continue
        found = best_params(study)
        if found is None:
            unsearched.append(arm.name)
        else:
            params[index] = found
    return params, busy, unsearched


class StudyDriver:
    """One driver's pass over a study, phase by phase: :meth:`search` (each arm's parameters),
    :meth:`final` (every arm × seed with them), :meth:`wait_for_others` (points another driver
    runs) until the study is done or the user stops, then :meth:`summary`. Storage says what
    is left at every step, so the same loop resumes a study and shares one with other drivers."""

    def __init__(self, job: StudyJob, study: optuna.Study, stop: StopRequest, *, retry_failed: bool,
                 verbose: bool, keep_checkpoints: bool = False) -> None:
        self.job, self.study, self.stop, self.verbose = job, study, stop, verbose
        self.keep_checkpoints = keep_checkpoints
        """Keep search trials' best weights after their arm's search (``run --keep-checkpoints``)."""
        self.tidied: set[int] = set()
        """Arms whose search checkpoints this driver has tidied (a finished search stays finished)."""
        self.retry_failed = retry_failed
        """Once per run: a point that fails again is left for the next run."""
        self.seeds = profile_plan(job.spec, job.profile)[0]
        self.searched = 0
        self.released = 0
        self.already_done: int | None = None
        self.unsearched: list[str] = []
        self.unrecorded: dict[tuple[str, int], str] = {}
        """Points whose trial failed before it reached storage: not run again by this driver."""
        self._told_waiting = False

    @property
    def planned(self) -> int:
        return len(self.job.arms) * len(self.seeds)

    def run(self) -> None:
        while not self.stop.requested and self.step():
            pass

    def step(self) -> bool:
        """One pass: search, then the final points left (or wait for another driver's). False
        when the study is done, or this driver must stop (Ctrl-C, trials it had to release)."""
        params, busy = {}, set()
        if self.job.spec.search:
            searched = self.search()
            if searched is None:
                return False
            params, busy = searched
        todo, elsewhere = self.plan(params)
        if todo:
            return self.final(todo, params)
        if elsewhere or busy:
            self.wait_for_others(len(elsewhere) + len(busy))
            return True
        return False

    def search(self) -> tuple[dict[int, dict], set[int]] | None:
        """Run what is left of every arm's search; (best parameters of each arm whose search is
        over, arms another driver still searches), or None when this driver must stop."""
        ran, self.released = run_search(self.job, self.retry_failed, self.verbose, self.stop)
        self.searched += ran
        if self.released or self.stop.requested:
            return None
        params, busy, self.unsearched = searched_parameters(self.job)
        self.tidy_searches()
        return params, busy

    def tidy_searches(self) -> None:
        """Remove the search checkpoints of every arm whose search is complete in storage (never
        one that still runs or waits, in this driver or another): the finals train from scratch."""
        per_arm = profile_plan(self.job.spec, self.job.profile)[1]
        for index, arm in enumerate(self.job.arms):
            if index in self.tidied:
                continue
            study = optuna.load_study(study_name=search_study_name(self.job.spec, arm.name),
                                      storage=open_storage(self.job.url))
            if search_complete(study, per_arm):
                freed = tidy_search(study, self.job.checkpoints, keep=self.keep_checkpoints)
                log.info("Search of %s complete: %.1f MB of its checkpoints removed.", arm.name, freed / 1e6)
                self.tidied.add(index)

    def plan(self, params: dict[int, dict]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(final points this driver runs now, points a live trial of another driver runs)."""
        todo, elsewhere, done = remaining_points(self.study, self.job.arms, self.seeds, retry_failed=self.retry_failed)
        self.already_done = done if self.already_done is None else self.already_done
        self.retry_failed = False
        todo = [(i, seed) for i, seed in todo if (not self.job.spec.search or i in params)
                and (self.job.arms[i].name, seed) not in self.unrecorded]
        return longest_first(self.job, todo, params) if todo else [], elsewhere

    def final(self, todo: list[tuple[int, int]], params: dict[int, dict]) -> bool:
        """Train ``todo`` to full length; False when this driver must stop."""
        from ray import tune

        points = [{"arm": i, "seed": seed, "params": params.get(i), "search": None} for i, seed in todo]
        tuner = _tuner(self.job, "final", self.verbose, max_failures=LOST_WORKER_RETRIES,
                       param_space={"point": tune.grid_search(points)})
        if self.stop.requested:  # a Ctrl-C since the last check: no fit was running to hear it
            return False
        grid = tuner.fit()
        self.unrecorded.update(failed_before_storage(grid, self.job, self.study))
        self.released = release_own(self.study, self.job.driver)
        raise_if_storage_lost(grid)
        return not self.released

    def wait_for_others(self, count: int) -> None:
        if not self._told_waiting:
            log.warning("Another driver runs %d trial(s) of this study: waiting for them (their trials are taken "
                        "over if that driver stops).", count)
            self._told_waiting = True
        self.stop.sleep(heartbeat_s())

    def summary(self, seconds: float, report: Path | None) -> RunSummary:
        job, study = self.job, self.study
        complete = [StoredTrial.from_trial(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        by_others = sum(1 for t in complete if t.driver != job.driver) - (self.already_done or 0)
        failed = failures(study) + [f"{arm} seed {seed}: {error}" for (arm, seed), error in self.unrecorded.items()]
        left = max(0, self.planned - len({t.point for t in complete}) - len(failed))
        return RunSummary(self.planned, self.already_done or 0, finished_by(study, job.driver), failed, seconds,
                          self.released, self.searched, tuple(self.unsearched), report, max(0, by_others), left,
                          self.stop.requested and left > 0)


def run_study(path: Path | StudyFile, *, studies_dir: Path = Path("studies"), storage: str | None = None,
              data: str | None = None, profile: str | None = None, address: str | None = None,
              retry_failed: bool = False, verbose: bool = False, console=None,
              reports_dir: Path | None = Path("reports"), storage_path: str | None = None,
              cpus_per_trial: float | None = None, gpus_per_trial: float | None = None,
              require_complete: bool = False, keep_checkpoints: bool = False,
              stop: StopRequest | None = None,
              on_study: Callable[[optuna.Study], None] | None = None) -> RunSummary:
    """Run what the study still needs; ``console`` (a rich Console) shows the live view; the
    report in ``reports_dir/<study>/`` is refreshed as trials finish (None: no report). Each
    trial's CPUs and GPUs: :func:`trial_resources` (a resumed study may use others).

    Another driver may work on the same study: its live trials are left to it, and this driver
    waits for them (taking a trial over if its driver stops) so it returns with the study done.
    ``require_complete`` refuses an archive with patches missing from disk. Finished trials keep
    their best weights only, and an arm's search checkpoints go when its search is complete unless
    ``keep_checkpoints`` (:mod:`mmvit.study.checkpoints`); the checkpoints' disk is recorded at
    the start and end of the run."""
    started = time.time()
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    study_file = path if isinstance(path, StudyFile) else read_study(path, check_models=False)
    spec = study_file.spec  # the schema at once; the models while Ray starts
    data_root, archive, profile = resolve_data(data, spec, profile)
    paths = StudyPaths(spec.study, Path(studies_dir), Path(reports_dir or "reports"), storage_path)
    url = paths.storage_url(storage)
    log.info("Study %s in %s", spec.study, redact(url))
    with ExitStack() as session:
        # Importing torch and timm and building each arm's model on the meta device takes as long
        # as starting Ray: do both at once (ray.init must stay on the main thread).
        if stop is None:  # from the start: a stop while Ray starts is heard, not a crash
            stop = session.enter_context(StopRequest())
        pool = session.enter_context(ThreadPoolExecutor(1, thread_name_prefix="mmvit-spec"))
        checked = pool.submit(study_file.check_models)
        presence = pool.submit(archive_presence, archive, require_complete=require_complete)
        session.enter_context(ray_session(address, verbose))
        checked.result()
        counts = presence.result()  # both refuse before the study is created
        study, additions = ensure_study(open_storage(url), spec, source=study_file.source, archive=archive,
                                        profile=profile)
        write_study(study, StoredStudy(archive_presence=counts))
        if on_study is not None:  # a caller's own record beside the study's (a SLURM job's)
            on_study(study)
        if additions:
            log.warning("The study grows by %s.", ", ".join(additions))
        resources = trial_resources(spec, cpus_per_trial, gpus_per_trial)
        log.info("Trials of this run: %s.", describe_resources(resources))
        job = StudyJob(spec, url, profile, data_root, paths.checkpoints, spec.arms, driver=new_driver_id(),
                       ray_results=paths.ray_results, resources=resources, overrides=profile_overrides(spec, profile))
        record_identity(study, job)
        from mmvit.study.live_report import LiveReport

        live_report = LiveReport(url, spec.study, paths.report) if reports_dir else None
        session.enter_context(_live_view(job, console))
        if live_report:
            session.enter_context(live_report)
        check_resources(job.resources)
        warn_unshared(storage_path)
        driver = StudyDriver(job, study, stop, retry_failed=retry_failed,
                             verbose=verbose, keep_checkpoints=keep_checkpoints)
        record_disk(study, search_studies(job), job.checkpoints)
        driver.run()
        record_disk(study, search_studies(job), job.checkpoints)  # before the report's last build
    return driver.summary(time.time() - started, live_report.index if live_report else None)


def concurrency(job: StudyJob) -> int:
    """How many trials the cluster runs at once with this run's resources (for the ETA)."""
    import ray

    total, resources = ray.cluster_resources(), job.resources
    fits = total.get("CPU", 1) // resources["cpu"]
    if resources["gpu"]:
        fits = min(fits, total.get("GPU", 0) // resources["gpu"])
    return int(max(1, min(fits, job.spec.max_concurrent or fits)))


@contextmanager
def _live_view(job: StudyJob, console) -> Iterator[None]:
    if console is None:
        yield
        return
    from mmvit.study.progress import LiveView

    spec = job.spec
    seeds, search_budget = profile_plan(spec, job.profile)  # what this run does, not the file's full plan
    with LiveView(job.url, spec.study, seeds=len(seeds), direction=spec.direction,
                  concurrency=concurrency(job), console=console, search_budget=search_budget,
                  note=describe_resources(job.resources)):
        yield


def status_rows(study_name: str, *, studies_dir: Path = Path("studies"), storage: str | None = None):
    """(arm, seed, state, validation metric, test metrics) per trial, from storage only."""
    url = StudyPaths(study_name, studies_dir).existing_storage_url(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    except KeyError:
        raise StudyError(f"The storage {redact(url)} has no study {study_name!r}.") from None
    def order(trial) -> tuple[int, int, int]:
        stored = StoredTrial.from_trial(trial)
        return stored.arm_index or 0, stored.seed or 0, trial.number

    return study, sorted(study.get_trials(deepcopy=False), key=order)
