"""A real two-node Ray cluster on loopback, started as a user would (`ray start --head`, then
`ray start --address` for a second node, token authentication on, one logical GPU per node), and
`mmvit-study run --address HOST:PORT --storage-path SHARED`: trials run on both nodes, the
study, its checkpoints, Ray's results and the report are complete."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import optuna
import pytest
from optuna.trial import TrialState

from mmvit.study.storage import open_storage, storage_url
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
def two_node_cluster(tmp_path) -> Iterator[tuple[str, dict]]:
    """(HOST:PORT of the head, the environment of a user holding the cluster's token)."""
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
        yield f"127.0.0.1:{port}", user_env
    finally:
        for node in reversed(nodes):
            _stop(node)
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start` left its address for ray.init()
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


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
        assert (folder / "last.pt").is_file() and (folder / "best.pt").is_file(), folder
    assert any((shared / NAME / "ray").iterdir()), "Ray's results on the shared path"
    assert not (tmp_path / "studies" / NAME / "checkpoints").exists()
    page = (tmp_path / "reports" / NAME / "index.html").read_text()
    for fusion in ("early", "sct", "modality_token", "channel_token"):
        assert f"model.fusion={fusion}" in page, fusion
