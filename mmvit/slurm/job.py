"""Inside a SLURM job: Ray over the allocation, the study's driver, the job's record, the requeue.

The order matters at every exit. A stop signal (the ``--signal`` before the time limit, a
preemption, ``scancel``, ``scontrol requeue``) is heard from the first moment, before Ray starts;
the driver stops as a first Ctrl-C stops it; Ray is stopped before the job is requeued, because
the requeue ends the job's processes; and the job's record is in storage before either, so
``mmvit-study status`` tells the job history even of a job that was killed while it stopped."""

from __future__ import annotations

import datetime as _dt
import logging
import signal
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mmvit.errors import MMViTError
from mmvit.slurm.allocation import Allocation, current_allocation

log = logging.getLogger(__name__)
NODE_TIMEOUT_S = 300.0
"""How long the workers get to join Ray (a cold shared filesystem imports slowly)."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class JobResult:
    """How the job ended: ``exit_code`` for the batch script, ``message`` for its log."""

    outcome: str
    message: str
    exit_code: int
    requeue: bool
    study: str = ""
    summary: Any = None
    """The driver's :class:`mmvit.study.runner.RunSummary`, None where it never ran."""
    job_id: str = ""


def decide(summary: Any | None, allocation: Allocation, max_restarts: int, stopped_by: str | None,
           error: str | None) -> JobResult:
    """Requeue while planned trials remain and restarts are left; a user error (a bad file, an
    archive that is not there) would only fail again, so it is never requeued."""
    if error is not None and summary is None and stopped_by is None:
        return JobResult("error", error, 1, False)
    left = summary.left if summary is not None else None
    if summary is not None and left == 0 and not summary.stopped:
        failed = f", {len(summary.failed)} failed" if summary.failed else ""
        return JobResult("completed", f"The study is complete{failed}.", 0, False)
    if allocation.restart >= max_restarts:
        return JobResult("stopped", f"Planned trials remain, but the job has been restarted {allocation.restart} "
                         f"time(s) (--max-restarts {max_restarts}): submit it again to go on.", 130, False)
    left_text = f"{left} planned trial(s) remain" if left is not None else "the study did not finish"
    return JobResult("requeued", f"{left_text}: requeueing the job (restart {allocation.restart + 1} of at most "
                     f"{max_restarts}).", 0, True)


def requeue(job_id: str) -> None:
    """``scontrol requeue``: the job goes back to the queue with its id, and SLURM ends this
    process (so it is the last thing a job does). A job that SLURM is already requeueing
    (preemption) refuses it harmlessly."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue signals this job: end cleanly, not mid-call
    done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        log.warning("scontrol requeue %s: %s", job_id, " ".join((done.stderr or done.stdout).split()))


def _load_study(name: str, url: str):
    import optuna

    from mmvit.storage.connection import open_storage

    try:
        return optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:  # not created yet: the first job writes its record when the driver ends
        return None


KILLED = "killed"
"""A run whose record still said ``running`` when the job's next run started: SLURM ended it
before its driver could (``scontrol requeue``, preemption, the time limit, a node failure)."""


def _record(name: str, url: str, record: Any, study: Any = None) -> None:
    """Write the job's record (the study loaded from ``url`` unless given), and close the
    records of this job's earlier runs that never could."""
    from mmvit.record_schema import StoredSlurmJob, write_slurm_job

    try:
        study = study if study is not None else _load_study(name, url)
        if study is None:
            return
        for earlier in StoredSlurmJob.all_of(study):
            if earlier.job_id == record.job_id and earlier.restart < record.restart and earlier.outcome == "running":
                write_slurm_job(study, replace(earlier, outcome=KILLED, reason="ended by SLURM before its driver"))
        write_slurm_job(study, record)
    except Exception as error:  # the record is for people; it never costs the study its requeue
        log.warning("Could not record SLURM job %s in the study's storage: %s", record.job_id, error)


def run_job(file: Path, *, max_restarts: int, studies_dir: Path, storage: str | None, verbose: bool,
            console: Any, node_timeout: float = NODE_TIMEOUT_S, **run_options: Any) -> JobResult:
    """Run the study ``file`` in this SLURM job (see the module docstring); the caller prints the
    result and then calls :func:`requeue` where ``result.requeue`` says so."""
    from mmvit.record_schema import StoredSlurmJob
    from mmvit.slurm.ray_nodes import start_ray
    from mmvit.storage.connection import storage_url
    from mmvit.study.spec import read_study
    from mmvit.study.stopping import StopRequest

    allocation = current_allocation()
    with StopRequest() as stop:  # from here on, SIGTERM asks the job to stop; it never kills it mid-write
        study_file = read_study(file, check_models=False)
        name = study_file.spec.study
        url = storage_url(name, studies_dir, storage)
        record = StoredSlurmJob(allocation.job_id, allocation.restart, list(allocation.nodes),
                                allocation.cpus_per_node, allocation.gpus_per_node, _now())
        _record(name, url, record)
        log.warning("SLURM job %s (restart %d) on %s: %d CPU(s) and %d GPU(s) per node.", allocation.job_id,
                    allocation.restart, ", ".join(allocation.nodes), allocation.cpus_per_node,
                    allocation.gpus_per_node)
        summary, error = None, None
        nodes = None
        try:
            if not stop.requested:
                nodes = start_ray(allocation, studies_dir.resolve() / name / "slurm")
            if not stop.requested and nodes is not None:
                summary = _drive(study_file, nodes, allocation, stop, studies_dir=studies_dir,
                                 storage=storage, verbose=verbose, console=console, node_timeout=node_timeout,
                                 on_study=lambda study: _record(name, url, record, study), **run_options)
        except KeyboardInterrupt:  # a second stop signal: at once
            error = "stopped at once (a second stop signal)"
        except MMViTError as user_error:
            error = str(user_error)
        except Exception as crash:  # Ray taken down under the driver (a preemption signals every process)
            if not stop.requested:
                raise
            error = f"{type(crash).__name__}: {crash}"
        finally:
            if nodes is not None:
                nodes.stop()
        result = decide(summary, allocation, max_restarts, stop.signal_name, error)
        reason = stop.signal_name or (error if result.outcome == "error" else None)
        if result.outcome == "stopped":
            reason = f"--max-restarts {max_restarts} reached" + (f" ({stop.signal_name})" if stop.signal_name else "")
        _record(name, url, replace(record, ended=_now(), outcome=result.outcome, reason=reason,
                                   trials_run=summary.ran if summary is not None else 0,
                                   left=summary.left if summary is not None else None))
        if summary is None and error is not None and result.outcome == "error":
            raise MMViTError(error)
    return replace(result, study=name, summary=summary, job_id=allocation.job_id)


def _drive(study_file: Any, nodes: Any, allocation: Allocation, stop: Any, *, node_timeout: float,
           studies_dir: Path, storage: str | None, verbose: bool, console: Any, **run_options: Any):
    """The study's driver on the job's Ray, once every node has joined; its summary."""
    from mmvit.slurm.ray_nodes import wait_for_nodes
    from mmvit.study.runner import ray_session, run_study

    with ray_session(nodes.address, verbose):
        wait_for_nodes(len(allocation.nodes), node_timeout, nodes)
        summary = run_study(study_file, studies_dir=studies_dir, storage=storage, address=nodes.address,
                            verbose=verbose, console=console, stop=stop, **run_options)
    return summary
