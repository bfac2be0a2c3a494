"""SLURM without a cluster: what an allocation holds, the script `slurm submit` writes, how a job
decides to requeue, and the stop signal SLURM sends. The real one-node SLURM runs the slow tests
of tests/test_slurm.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from mmvit.cli import app
from mmvit.errors import StudyError
from mmvit.slurm.allocation import Allocation, current_allocation, gpu_count
from mmvit.slurm.job import decide
from mmvit.slurm.script import JobRequest, render_script
from mmvit.study.stopping import StopRequest, keep_stop_handlers

STUDY = """\
study: on-slurm
ablate:
  model.fusion: [early, sct]
seeds: [0, 1, 2]
"""


@pytest.mark.parametrize("request_, gpus", [("4", 4), ("a100:4", 4), ("gpu:a100:2,gpu:v100:1", 3),
                                            ("gpu:2(IDX:0-1)", 2), ("a100", 1), ("", 0), (None, 0)])
def test_gpu_requests_count_as_slurm_writes_them(request_, gpus):
    assert gpu_count(request_) == gpus


def test_the_allocation_comes_from_slurm_variables_with_the_batch_host_first():
    env = {"SLURM_JOB_ID": "812", "SLURM_RESTART_COUNT": "2", "SLURM_JOB_NODELIST": "gpu07",
           "SLURMD_NODENAME": "gpu07", "SLURM_CPUS_ON_NODE": "32", "SLURM_GPUS_ON_NODE": "4"}
    assert current_allocation(env) == Allocation("812", 2, ("gpu07",), 32, 4)
    # Older SLURMs set only the request and the per-node CPU list.
    older = current_allocation({"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_CPUS_PER_NODE": "16(x2)",
                                "SLURM_GPUS_PER_NODE": "a100:2"})
    assert (older.restart, older.cpus_per_node, older.gpus_per_node) == (0, 16, 2)


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="SLURM's client commands are not installed")
def test_a_node_range_is_expanded_by_slurm_itself(tmp_path, monkeypatch):
    conf = tmp_path / "slurm.conf"  # scontrol reads one even to expand names (a job has the site's)
    conf.write_text("ClusterName=c\nSlurmctldHost=localhost\nNodeName=gpu[07-11]\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    allocation = current_allocation({"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "gpu[07-09,11]",
                                     "SLURMD_NODENAME": "gpu08", "SLURM_CPUS_ON_NODE": "8"})
    assert allocation.nodes == ("gpu08", "gpu07", "gpu09", "gpu11")
    assert allocation.head == "gpu08" and allocation.workers == ("gpu07", "gpu09", "gpu11")


def test_outside_a_job_the_job_command_says_what_to_run_instead():
    with pytest.raises(StudyError, match=r"SLURM_JOB_ID.*slurm submit.*mmvit-study run"):
        current_allocation({})


def _request(tmp_path: Path, **fields) -> JobRequest:
    study_file = tmp_path / "study.yaml"
    study_file.write_text(STUDY)
    return JobRequest(study_file, "on-slurm", studies_dir=tmp_path / "studies", **fields)


def _directives(script: str) -> list[str]:
    return [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_the_script_asks_for_the_allocation_and_runs_the_driver_with_the_run_options(tmp_path, monkeypatch):
    monkeypatch.setenv("MMVIT_CACHE_DIR", "/scratch/my cache")
    request = _request(tmp_path, nodes=2, gpus_per_node=4, cpus_per_node=32, time="04:00:00", partition="gpu",
                       signal_lead=240, max_restarts=3, extra=["--constraint=a100"],
                       run_options=["--storage=postgresql://mmvit@db/studies", "--profile=smoke"])
    script = render_script(request)
    assert _directives(script) == [
        "--job-name=mmvit-on-slurm", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=32", "--gpus-per-node=4",
        "--time=04:00:00", "--partition=gpu", "--signal=B:TERM@240", "--requeue", "--open-mode=append",
        f"--output={request.folder / 'job-%j.out'}", "--constraint=a100"]
    command = script.strip().splitlines()[-1]
    assert command.startswith("exec ") and " -m mmvit slurm job " in command
    assert "--max-restarts=3" in command and "--storage=postgresql://mmvit@db/studies" in command
    assert str(tmp_path / "study.yaml") in command and f"--studies-dir={(tmp_path / 'studies').resolve()}" in command
    assert "export MMVIT_CACHE_DIR='/scratch/my cache'" in script  # quoted for the shell
    checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr


def test_a_script_without_optional_requests_leaves_them_to_the_site(tmp_path):
    directives = _directives(render_script(_request(tmp_path)))
    assert not [d for d in directives if d.startswith(("--gpus", "--time", "--partition", "--mem", "--cpus"))]
    assert "--signal=B:TERM@300" in directives and "--requeue" in directives


@pytest.mark.parametrize("fields, message", [
    ({"nodes": 0}, "--nodes must be at least 1"),
    ({"time": "4h"}, "--time must be a SLURM time limit"),
    ({"signal_lead": 2}, "--signal-lead must be at least 10 s"),
    ({"max_restarts": -1}, "--max-restarts must be 0 or more"),
    ({"gpus_per_node": -1}, "--gpus-per-node must be 0 or more"),
])
def test_requests_sbatch_would_refuse_only_later_are_refused_now(tmp_path, fields, message):
    with pytest.raises(StudyError, match=message):
        _request(tmp_path, **fields).check()


@pytest.mark.parametrize("limit", ["30", "04:00:00", "1-00", "2-12:00:00", "45:00"])
def test_slurm_time_formats_pass(tmp_path, limit):
    _request(tmp_path, time=limit).check()


def test_submit_dry_run_writes_an_owner_only_script_and_submits_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(STUDY)
    result = CliRunner().invoke(app, ["slurm", "submit", "study.yaml", "--nodes", "2", "--time", "01:00:00",
                                      "--storage", "postgresql://mmvit@db/studies", "--dry-run"])
    assert result.exit_code == 0, result.output
    script = tmp_path / "studies" / "on-slurm" / "slurm" / "on-slurm.sbatch"
    assert script.stat().st_mode & 0o777 == 0o700
    assert "not submitted" in result.output and "#SBATCH --nodes=2" in result.output


def test_submit_refuses_a_bad_study_file_before_it_waits_in_a_queue(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(STUDY.replace("seeds: [0, 1, 2]", "seeds: [0, 0]"))
    result = CliRunner().invoke(app, ["slurm", "submit", "study.yaml", "--dry-run"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "study.yaml" in result.output
    assert not (tmp_path / "studies" / "on-slurm" / "slurm").exists()


def test_several_nodes_on_sqlite_are_warned_about(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(STUDY)
    result = CliRunner().invoke(app, ["slurm", "submit", "study.yaml", "--nodes", "3", "--dry-run"])
    assert result.exit_code == 0 and "SQLite" in result.output and "postgresql" in result.output


def _summary(left: int, stopped: bool = False, failed=()):
    return SimpleNamespace(left=left, stopped=stopped, failed=list(failed), ran=1)


ALLOC = Allocation("5", 1, ("n1",), 4, 0)


def test_a_job_requeues_while_planned_trials_remain_and_restarts_are_left():
    assert decide(_summary(3, stopped=True), ALLOC, 10, "SIGTERM", None).requeue
    done = decide(_summary(0), ALLOC, 10, None, None)
    assert (done.outcome, done.requeue, done.exit_code) == ("completed", False, 0)
    spent = decide(_summary(3, stopped=True), ALLOC, 1, "SIGTERM", None)
    assert (spent.outcome, spent.requeue, spent.exit_code) == ("stopped", False, 130)
    assert "--max-restarts 1" in spent.message


def test_a_user_error_is_not_requeued_but_a_crash_under_a_stop_is():
    error = decide(None, ALLOC, 10, None, "The archive is not there")
    assert (error.outcome, error.requeue, error.exit_code) == ("error", False, 1)
    assert decide(None, ALLOC, 10, "SIGTERM", "RayActorError: node died").requeue


def test_sigterm_asks_for_the_same_graceful_stop_as_a_first_ctrl_c():
    previous_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    before = signal.getsignal(signal.SIGTERM)
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert stop.requested and stop.signal_name == "SIGTERM"
            with pytest.raises(KeyboardInterrupt):  # a second one stops at once
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
    finally:
        signal.signal(signal.SIGUSR1, previous_usr1)
    assert signal.getsignal(signal.SIGTERM) is before


def test_handlers_installed_inside_keep_stop_handlers_are_undone():
    """What ray.init does natively (absl's failure handler on SIGTERM), done here in Python."""
    with StopRequest() as stop:
        ours = signal.getsignal(signal.SIGTERM)
        with keep_stop_handlers():
            assert os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] == "1"
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGTERM) is ours
        assert "RAY_DISABLE_FAILURE_SIGNAL_HANDLER" not in os.environ
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.requested


def test_workers_start_in_one_srun_step_on_every_node_but_the_head(tmp_path, monkeypatch):
    from mmvit.slurm import ray_nodes

    started = []
    monkeypatch.setattr(ray_nodes.subprocess, "Popen", lambda command, **kwargs: started.append(command))
    ray_nodes._start_workers(Allocation("7", 0, ("n1", "n2", "n3"), 16, 4), "10.0.0.1:6379", tmp_path / "ray",
                             tmp_path)
    [command] = started
    srun = command[:command.index(sys.executable)]
    assert srun == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--nodelist=n2,n3",
                    "--kill-on-bad-exit=0", "--gres=gpu:4"]
    assert command[command.index(sys.executable):] == [sys.executable, "-m", "mmvit.slurm.ray_nodes", "worker",
                                                       "10.0.0.1:6379", str(tmp_path / "ray")]
