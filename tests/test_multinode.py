"""A real two-node Ray cluster on loopback, started as a user would (`ray start --head`, then
`ray start --address` for a second node, token authentication on, one logical GPU per node), and
`mmvit-study run --address HOST:PORT --storage-path SHARED`: trials run on both nodes, the
study, its checkpoints, Ray's results and the report are complete."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator

import optuna
import pytest
from optuna.trial import TrialState

from mmvit.storage import optuna_adapter
from mmvit.storage.connection import open_storage, storage_url
from tests.study_process import descendants

RAY = str(Path(sys.executable).parent / "ray")
CLI = str(Path(sys.executable).parent / "mmvit-study")
NAME = "two-nodes"
SPEC = """\
study: two-nodes
ablate:
  model.fusion: [early, sct, modality_token, channel_token]
seeds: [0]
base:
  model: {patch_size: 30, depth: 1, embed_dim: 32, num_heads: 2}
  train: {epochs: 4, batch_size: 32}
  data: {num_workers: 0}
resources: {cpu: 0.5, gpu: 0.5}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ray_start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                             "--num-gpus", "1", "--object-store-memory", str(100 * 2**20), "--disable-usage-stats",
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_started(node: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    seen = []
    for line in node.stdout:  # `ray start --block` says so, then blocks
        seen.append(line)
        if "Ray runtime started" in line:
            return
        if time.time() > deadline:
            break
    pytest.fail("ray start did not start:\n" + "".join(seen))


def _stop(node: subprocess.Popen) -> None:
    for pid in [*descendants(node.pid), node.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.wait(timeout=30)


@pytest.fixture
def two_node_cluster(cluster_nodes) -> tuple[str, dict]:
    """(HOST:PORT of the head, the environment of a user holding the cluster's token)."""
    address, env, _ = cluster_nodes
    return address, env


@pytest.fixture
def cluster_nodes(tmp_path) -> Iterator[tuple[str, dict, list[subprocess.Popen]]]:
    """The two-node cluster and its `ray start --block` processes ([head, worker]): a test stops a
    node by killing its process tree (`ray stop` would stop both nodes of this machine)."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))  # what the admin gave the user
    user_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    user_env.update(HOME=str(home), COLUMNS="200")
    # The nodes start without this shell's MMVIT_* settings (as on a real cluster): the driver
    # hands its own to the workers.
    node_env = {**{k: v for k, v in user_env.items() if not k.startswith("MMVIT_")}, "RAY_AUTH_MODE": "token"}
    port = _free_port()
    head = _ray_start(["--head", "--port", str(port), "--include-dashboard", "false"], node_env)
    nodes = [head]
    try:
        _wait_started(head)
        nodes.append(_ray_start(["--address", f"127.0.0.1:{port}"], node_env))
        _wait_started(nodes[-1])
        yield f"127.0.0.1:{port}", user_env, nodes
    finally:
        for node in reversed(nodes):
            _stop(node)
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start` left its address for ray.init()
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


@pytest.mark.slow  # 34 s: two Ray nodes started as processes, then a study across them
@pytest.mark.timeout(400)
def test_a_study_runs_across_two_ray_nodes_with_shared_checkpoints(two_node_cluster, tmp_path, demo_root):
    address, env = two_node_cluster
    (tmp_path / "study.yaml").write_text(SPEC)
    shared = tmp_path / "shared"
    run = subprocess.run([CLI, "run", str(tmp_path / "study.yaml"), "--address", address, "--storage-path", str(shared),
                          "--data", str(demo_root), "--profile", "full", "--studies-dir", str(tmp_path / "studies"),
                          "--reports-dir", str(tmp_path / "reports")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "4 trial(s) planned: 0 already done, 4 run now, 0 failed" in output, output
    assert "InvalidAuthToken" not in output and "Traceback" not in output, output

    trials = optuna.load_study(study_name=NAME, storage=open_storage(storage_url(NAME, tmp_path / "studies"))
                               ).get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    nodes = {t.user_attrs["node"] for t in trials}
    assert len(nodes) == 2, f"trials ran on both nodes: {nodes}"
    assert all(t.user_attrs["gpu_ids"] == ["0"] for t in trials), "each node's one logical GPU, shared by two trials"
    assert {t.user_attrs["heartbeat_s"] for t in trials} == {int(env["MMVIT_HEARTBEAT_S"])}, \
        "the workers beat at the driver's interval, not their default"
    for trial in trials:  # every checkpoint on the shared path, none under --studies-dir
        folder = shared / NAME / "checkpoints" / "final" / trial.user_attrs["config_key"]
        assert (folder / "best.pt").is_file() and not (folder / "last.pt").exists(), folder  # finished: best only
    assert any((shared / NAME / "ray").iterdir()), "Ray's results on the shared path"
    assert not (tmp_path / "studies" / NAME / "checkpoints").exists()
    page = (tmp_path / "reports" / NAME / "index.html").read_text()
    for fusion in ("early", "sct", "modality_token", "channel_token"):
        assert f"model.fusion={fusion}" in page, fusion


LOSS_NAME = "node-loss"
LOSS_EPOCHS = 40
LOSS_SPEC = f"""\
study: {LOSS_NAME}
ablate:
  model.fusion: [early, sct]
seeds: [0]
base:
  model: {{patch_size: 30, depth: 1, embed_dim: 32, num_heads: 2}}
  train: {{epochs: {LOSS_EPOCHS}, batch_size: 32}}
  data: {{num_workers: 0}}
resources: {{cpu: 1, gpu: 1}}
"""


def _node_id(node: subprocess.Popen) -> str:
    """The Ray node id of a `ray start` process: its raylet's ``--node_id=`` argument."""
    for pid in descendants(node.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        for arg in argv:
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
    pytest.fail(f"no raylet below ray start (pid {node.pid})")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_trial_on_a_lost_node_is_retried_on_the_other_from_its_checkpoint(cluster_nodes, tmp_path, demo_root):
    """Issue 15, item 5: the worker node goes away (its whole process tree killed, as a machine that
    loses power) while it runs a trial that has checkpointed an epoch. Ray retries the trial on the
    head; the retry takes its own lost attempt's point over, resumes from the last checkpoint on
    --storage-path, and the run ends with every point COMPLETE exactly once."""
    address, env, (head, worker) = cluster_nodes
    head_id, worker_id = _node_id(head), _node_id(worker)
    (tmp_path / "study.yaml").write_text(LOSS_SPEC)
    shared, log = tmp_path / "shared", tmp_path / "run.log"
    with log.open("w") as out:
        run = subprocess.Popen([CLI, "run", str(tmp_path / "study.yaml"), "--address", address, "--storage-path",
                                str(shared), "--data", str(demo_root), "--profile", "full", "--studies-dir",
                                str(tmp_path / "studies"), "--reports-dir", str(tmp_path / "reports")],
                               stdout=out, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
    url = storage_url(LOSS_NAME, tmp_path / "studies")
    try:
        study, lost, deadline = None, None, time.time() + 300
        while lost is None:  # the worker's trial, once an epoch is checkpointed, with epochs to go
            assert run.poll() is None and time.time() < deadline, log.read_text()
            try:
                study = study or optuna.load_study(study_name=LOSS_NAME, storage=open_storage(url))
            except KeyError:  # the driver has not created it yet
                time.sleep(0.3)
                continue
            lost = next((t for t in study.get_trials(states=(TrialState.RUNNING,))
                         if t.user_attrs.get("node") == worker_id
                         and 1 <= len(t.user_attrs.get("history", [])) <= LOSS_EPOCHS - 10), None)
            time.sleep(0.05)
        _stop(worker)  # the node goes away: raylet, workers and all
        stopped = datetime.now()
        code = run.wait(timeout=420)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    output = log.read_text()
    assert code == 0, output
    assert "2 trial(s) planned: 0 already done, 2 run now, 0 failed" in output, output
    assert "Interrupted" not in output, output

    trials = optuna.load_study(study_name=LOSS_NAME, storage=open_storage(url)).get_trials()
    point = (lost.user_attrs["arm"], lost.user_attrs["seed"])
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted((t.user_attrs["arm"], t.user_attrs["seed"]) for t in complete) == [
        ("model.fusion=early", 0), ("model.fusion=sct", 0)], "every point COMPLETE exactly once"
    dead = next(t for t in trials if optuna_adapter.trial_id(t) == optuna_adapter.trial_id(lost))
    assert dead.state == TrialState.FAIL and dead.user_attrs["error"].startswith("interrupted"), dead.user_attrs
    assert dead.user_attrs["ray_trial"] == lost.user_attrs["ray_trial"]
    recorded = len(dead.user_attrs["history"])  # epochs the lost attempt finished (and checkpointed)
    assert len(trials) == 3, "the lost attempt and two COMPLETE trials, nothing else"
    retry = next(t for t in complete if (t.user_attrs["arm"], t.user_attrs["seed"]) == point)
    assert retry.user_attrs["driver"] == dead.user_attrs["driver"] and \
        retry.user_attrs["ray_trial"] == dead.user_attrs["ray_trial"], "Ray retried the same trial"
    assert retry.user_attrs["node"] == head_id, "retried on the surviving node"
    resumed = retry.user_attrs.get("resumed_from_epoch", 0)
    assert resumed >= max(1, recorded), f"resumed from the last checkpoint, not epoch {resumed}"
    assert len(retry.user_attrs["history"]) == LOSS_EPOCHS
    folder = shared / LOSS_NAME / "checkpoints" / "final" / retry.user_attrs["config_key"]
    assert (folder / "best.pt").is_file() and not (folder / "last.pt").exists(), folder  # finished: best only

    other = next(t for t in complete if t is not retry)
    epoch_s = sum(e["seconds"] for e in retry.user_attrs["history"]) / LOSS_EPOCHS
    stall = (retry.datetime_start - stopped).total_seconds()
    noticed = [datetime.strptime(when, "%Y-%m-%d_%H-%M-%S")  # Tune's error file, to the second
               for error in (shared / LOSS_NAME / "ray").glob("*/*/error.txt")
               for when in re.findall(r"occurred at (\S+)\)", error.read_text())]
    print(f"\nnode loss: the worker's trial {point} was stopped after {recorded} epoch(s) recorded "
          f"(of {LOSS_EPOCHS}, ~{epoch_s:.2f} s of training each); Ray noticed the loss "
          f"{', '.join(f'{(n - stopped).total_seconds():+.0f} s' for n in noticed)} (to the second) after the "
          f"stop; the retry started on the head "
          f"{stall:.1f} s later (the head's own trial finished "
          f"{(other.datetime_complete - stopped).total_seconds():.1f} s after the stop), resumed from epoch "
          f"{resumed}: {max(0, recorded - resumed)} recorded epoch(s) redone, plus the one in progress; "
          f"lost attempt: {dead.user_attrs['error']!r}")
