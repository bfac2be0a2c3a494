"""Studies as SLURM jobs on a real one-node SLURM (tests/slurm_cluster.py): submitted through
`mmvit-study slurm submit`, stopped by the time limit or requeued from outside, and resumed by
the job's next run, with the job history in storage and no Ray process left behind."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mmvit.record_schema import StoredSlurmJob
from mmvit.slurm.ray_nodes import processes_using
from tests.slurm_cluster import slurm_cluster  # noqa: F401,F811  (the fixture)

pytestmark = pytest.mark.slow

STUDY = """\
study: {name}
ablate:
  model.fusion: [{arms}]
seeds: [0]
base:
  model: {{patch_size: 30, depth: 1, embed_dim: 32, num_heads: 2}}
  train: {{epochs: {epochs}, batch_size: 32}}
  data: {{num_workers: 0}}
resources: {{cpu: 1}}
"""


def _submit(cluster, tmp_path: Path, name: str, *options: str, arms: str = "early, sct", epochs: int = 3) -> str:
    study_file = tmp_path / f"{name}.yaml"
    study_file.write_text(STUDY.format(name=name, arms=arms, epochs=epochs))
    done = subprocess.run([sys.executable, "-m", "mmvit", "slurm", "submit", str(study_file), "--profile", "full",
                           "--cpus-per-node", str(cluster.cpus), *options], cwd=tmp_path, env=cluster.env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return re.search(r"Submitted job (\d+)", done.stdout).group(1)


def _study(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'studies' / name / 'optuna.db'}")


def _log(tmp_path: Path, name: str, job: str) -> str:
    return (tmp_path / "studies" / name / "slurm" / f"job-{job}.out").read_text()


def _status(cluster, tmp_path: Path, name: str) -> str:
    return subprocess.run([sys.executable, "-m", "mmvit", "status", name], cwd=tmp_path, env=cluster.env,
                          capture_output=True, text=True, timeout=120).stdout


def _assert_each_point_once(study: optuna.Study, points: int, epochs: int) -> list:
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == points
    assert set(Counter(t.user_attrs["arm"] for t in complete).values()) == {1}, "no point ran twice"
    for trial in complete:
        assert [h["epoch"] for h in trial.user_attrs["history"]] == list(range(1, epochs + 1))
    return complete


def _assert_no_ray_left(job: str) -> None:
    assert not processes_using(f"/tmp/mmvit-ray-{job}-"), "a Ray process of the job outlived it"


def test_a_study_submitted_through_the_command_completes(slurm_cluster, tmp_path):  # noqa: F811
    job = _submit(slurm_cluster, tmp_path, "submitted")
    info = slurm_cluster.wait_job(job, timeout=600)
    log = _log(tmp_path, "submitted", job)
    assert info["JobState"] == "COMPLETED", log
    assert "The study is complete." in log and "Traceback" not in log
    _assert_each_point_once(_study(tmp_path, "submitted"), 2, 3)
    [record] = StoredSlurmJob.all_of(_study(tmp_path, "submitted"))
    assert (record.job_id, record.restart, record.outcome, record.trials_run, record.left) == (job, 0, "completed", 2, 0)
    assert record.cpus_per_node == slurm_cluster.cpus and record.nodes == [slurm_cluster.node]
    assert f"job {job} restart 0" in _status(slurm_cluster, tmp_path, "submitted")
    _assert_no_ray_left(job)


def test_a_study_longer_than_its_time_limit_completes_across_requeued_runs(slurm_cluster, tmp_path):  # noqa: F811
    """A 3-minute limit with the stop signal 60 s before it (SLURM may send it up to a minute
    early, so it comes 60-120 s into a run): two 250-epoch trials take about 250 s of training on
    an idle 2-core machine (about 1 s an epoch for both), so the study needs at least two runs
    however fast the machine is."""
    job = _submit(slurm_cluster, tmp_path, "walltime", "--time", "3", "--signal-lead", "60", "--max-restarts", "12",
                  epochs=250)
    info = slurm_cluster.wait_job(job, timeout=2400)
    log = _log(tmp_path, "walltime", job)
    assert info["JobState"] == "COMPLETED", log
    study = _study(tmp_path, "walltime")
    complete = _assert_each_point_once(study, 2, 250)
    runs = StoredSlurmJob.all_of(study)
    assert len(runs) >= 2 and int(info["Restarts"]) == len(runs) - 1
    assert [r.outcome for r in runs] == ["requeued"] * (len(runs) - 1) + ["completed"]
    assert all(r.reason == "SIGTERM" for r in runs[:-1])
    assert any(t.user_attrs.get("resumed_from_epoch", 0) > 0 for t in complete), "trials resumed from their epoch"
    assert log.count("Stopping (SIGTERM)") == len(runs) - 1, "one stop message a requeue"
    assert "SIGTERM received" not in log and "Traceback" not in log
    status = _status(slurm_cluster, tmp_path, "walltime")
    assert f"{len(runs) - 1} restart(s)" in status and "requeued (SIGTERM)" in status
    _assert_no_ray_left(job)


def _wait_mid_study(study_loader, timeout: float = 600) -> None:
    """Until a trial has finished an epoch (its checkpoint exists)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = study_loader().trials
        except KeyError:
            trials = []
        if any(t.state == TrialState.RUNNING and len(t.user_attrs.get("history", [])) >= 2 for t in trials):
            return
        time.sleep(1)
    pytest.fail("no trial reached its second epoch")


def test_a_job_requeued_from_outside_resumes_the_study(slurm_cluster, tmp_path):  # noqa: F811
    """`scontrol requeue` (what preemption with PreemptMode=REQUEUE does): SLURM signals every
    process of the job, Ray's included, and starts the job again."""
    job = _submit(slurm_cluster, tmp_path, "preempted", epochs=25)
    _wait_mid_study(lambda: _study(tmp_path, "preempted"))
    slurm_cluster.run("scontrol", "requeue", job)
    info = slurm_cluster.wait_job(job, timeout=900)
    log = _log(tmp_path, "preempted", job)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, log
    complete = _assert_each_point_once(_study(tmp_path, "preempted"), 2, 25)
    assert any(t.user_attrs.get("resumed_from_epoch", 0) > 0 for t in complete)
    runs = StoredSlurmJob.all_of(_study(tmp_path, "preempted"))
    assert len(runs) >= 2 and runs[-1].outcome == "completed"
    # SLURM may end the first run before its driver records how it ended: the next run says so.
    assert all(r.outcome in ("requeued", "killed") for r in runs[:-1]), runs
    assert "SIGTERM received" not in log
    _assert_no_ray_left(job)


def test_a_preempted_cache_build_resumes_to_the_same_bytes(slurm_cluster, tmp_path, demo_root,  # noqa: F811
                                                         monkeypatch):
    """A `data cache` job requeued mid-build (as preemption does) goes on from its finished
    chunks and writes what an uninterrupted build writes."""
    from mmvit.data import cache as cache_module
    from tests.test_cache_resume import CHUNK, CONVERT, _assert_same_cache, _build, _recorded, _split_dir

    monkeypatch.setattr(cache_module, "CHUNK", CHUNK)
    cache_dir = tmp_path / "cache"
    convert = tmp_path / "convert.py"
    convert.write_text(CONVERT.format(chunk=CHUNK, sleep=0.5, hang_at=0))
    log = tmp_path / "cache-%j.out"
    done = slurm_cluster.run("sbatch", "--parsable", "--requeue", "--open-mode=append", f"--output={log}",
                             "--wrap", f"exec {sys.executable} {convert} {demo_root} --split train "
                                       f"--cache-dir {cache_dir} --workers 1")
    job = done.stdout.strip().split(";")[0]
    split_dir = _split_dir(demo_root, cache_dir)
    deadline = time.monotonic() + 300
    while _recorded(split_dir, "s2-bilinear") < 2:
        assert time.monotonic() < deadline, "the build never recorded two chunks"
        time.sleep(0.2)
    slurm_cluster.run("scontrol", "requeue", job)
    info = slurm_cluster.wait_job(job, timeout=600)
    output = Path(str(log).replace("%j", job)).read_text()
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 1, output
    resumed = re.search(r"resuming, (\d+) of (\d+) patches already converted", output)
    assert resumed and 0 < int(resumed.group(1)) < int(resumed.group(2)), output
    reference = tmp_path / "reference"
    _build(demo_root, reference)
    _assert_same_cache(split_dir, _split_dir(demo_root, reference))


# In a fresh interpreter, as a job's driver is: Ray reads its token settings once, when imported.
JOIN_A_WORKER = """
import json, os, subprocess, sys
from pathlib import Path
from mmvit.slurm.allocation import Allocation
from mmvit.slurm.ray_nodes import processes_using, start_ray, wait_for_nodes
logs = Path(sys.argv[1])
nodes = start_ray(Allocation("4242", 0, ("head",), 1, 0), logs)
env = {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "worker", "SLURM_CPUS_ON_NODE": "1"}
with open(logs / "worker.log", "wb") as out:
    nodes.workers = subprocess.Popen([sys.executable, "-m", "mmvit.slurm.ray_nodes", "worker", nodes.address,
                                      str(nodes.temp_dir)], env=env, stdout=out, stderr=subprocess.STDOUT)
import ray
try:
    ray.init(address=nodes.address, logging_level="ERROR")
    wait_for_nodes(2, 120, nodes)
    cpus = ray.cluster_resources()["CPU"]
finally:
    ray.shutdown()
    nodes.stop()
print(json.dumps({"cpus": cpus, "leftovers": nodes.leftovers, "running": processes_using(str(nodes.temp_dir)),
                  "temp_dir_left": nodes.temp_dir.exists()}))
"""


def test_a_worker_node_joins_the_jobs_ray_and_nothing_of_it_is_left(tmp_path):
    """What `srun` starts on every other node of a job, started here beside the head as a second
    Ray node (a one-node SLURM cannot place it elsewhere): it sizes itself from its own SLURM_*
    variables, joins with the job's token, and goes when the job stops Ray."""
    import json

    done = subprocess.run([sys.executable, "-c", JOIN_A_WORKER, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cpus"] == 2, "each node brings the CPUs its allocation says"
    assert result["leftovers"] == [] and result["running"] == [], "the two `ray start --block` stop their own"
    assert not result["temp_dir_left"]
