"""Resume like a user: `mmvit-study run` as a real process, killed (the whole process tree, Ray's
daemons included) or interrupted with Ctrl-C mid-study, then the same command again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mmvit.storage.connection import open_storage, storage_url
from tests.study_process import descendants, wait_mid_study

EPOCHS = 40  # ~0.06 s each here: the first 25 leave a window of over a second to stop a trial in
SPEC = """\
study: {name}
ablate:
  model.fusion: [early, sct, modality_token]
seeds: [0]
base:
  model: {{patch_size: 30, depth: 1, embed_dim: 32, num_heads: 2}}
  train: {{epochs: {epochs}, batch_size: 32}}
  data: {{num_workers: 0}}
resources: {{cpu: 1}}
max_concurrent: 2
"""


def _start(tmp_path: Path, name: str, demo_root: Path) -> subprocess.Popen:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, epochs=EPOCHS))
    command = [str(Path(sys.executable).parent / "mmvit-study"), "run", str(path), "--data", str(demo_root),
               "--profile", "full", "--studies-dir", str(tmp_path / "studies")]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})


def _trials(tmp_path: Path, name: str):
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage_url(name, tmp_path / "studies")))
    except KeyError:
        return []
    return study.get_trials()


def _wait_mid_study(tmp_path: Path, name: str, process: subprocess.Popen):
    return wait_mid_study(lambda: optuna.load_study(
        study_name=name, storage=open_storage(storage_url(name, tmp_path / "studies"))), process, EPOCHS)


def _finish(tmp_path: Path, name: str, demo_root: Path) -> str:
    again = _start(tmp_path, name, demo_root)
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    return output


def _assert_resumed(tmp_path: Path, name: str, before) -> None:
    done_before = {t.number for t in before if t.state == TrialState.COMPLETE}
    trials = _trials(tmp_path, name)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3, "the final count equals the plan"
    assert len({t.user_attrs["config_key"] for t in complete}) == 3, "no configuration twice"
    assert done_before <= {t.number for t in complete}, "finished trials are kept, not re-run"
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert interrupted and all(t.user_attrs["error"].startswith("interrupted") for t in interrupted)
    for stopped in interrupted:
        if "config_key" not in stopped.user_attrs:  # killed between ask and its first attribute
            assert "history" not in stopped.user_attrs
            continue
        epochs_before = len(stopped.user_attrs.get("history", []))
        rerun = next(t for t in complete if t.user_attrs["config_key"] == stopped.user_attrs["config_key"])
        if epochs_before:  # the checkpoint may be one epoch ahead of storage, never behind
            assert rerun.user_attrs["resumed_from_epoch"] in (epochs_before, epochs_before + 1), \
                "the interrupted trial resumed after its last checkpointed epoch"
        assert [h["epoch"] for h in rerun.user_attrs["history"]] == list(range(1, EPOCHS + 1)), \
            "the resumed trial's history holds every epoch, from before and after the stop"
        assert rerun.user_attrs["epochs_run"] == EPOCHS


@pytest.mark.slow  # a CLI process killed and rerun (~40 s); tests/test_runner.py resumes in the default suite
def test_sigkill_of_the_whole_process_tree_then_the_same_command_resumes(tmp_path, demo_root):
    process = _start(tmp_path, "killed", demo_root)
    before = _wait_mid_study(tmp_path, "killed", process)
    victims = [process.pid, *descendants(process.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)
    before = _trials(tmp_path, "killed")
    assert any(t.state == TrialState.RUNNING for t in before), "the kill left trials RUNNING in storage"
    _finish(tmp_path, "killed", demo_root)
    _assert_resumed(tmp_path, "killed", before)


@pytest.mark.slow  # a CLI process stopped and rerun (~40 s); tests/test_runner.py resumes in the default suite
def test_ctrl_c_stops_gracefully_and_the_same_command_resumes(tmp_path, demo_root):
    process = _start(tmp_path, "stopped", demo_root)
    _wait_mid_study(tmp_path, "stopped", process)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole foreground group
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "Interrupted:" in output and "resume from their last epoch checkpoint" in output
    assert "Press Ctrl-C again to stop at once" in output, "the first Ctrl-C says what a second one does"
    assert "Traceback" not in output
    before = _trials(tmp_path, "stopped")
    assert not any(t.state == TrialState.RUNNING for t in before), "a graceful stop leaves nothing RUNNING"
    _finish(tmp_path, "stopped", demo_root)
    _assert_resumed(tmp_path, "stopped", before)


@pytest.mark.slow  # a CLI process stopped and rerun (~40 s)
def test_sigterm_stops_like_a_first_ctrl_c_with_no_native_dump_and_no_ray_left(tmp_path, demo_root):
    """SIGTERM is what SLURM (time limit, preemption, scancel), `kill` and container runtimes send,
    to the driver alone: Ray's own handler used to abort it (exit 134, "*** SIGTERM received")."""
    process = _start(tmp_path, "terminated", demo_root)
    _wait_mid_study(tmp_path, "terminated", process)
    ray_processes = descendants(process.pid)
    assert ray_processes, "the driver runs Ray below it"
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert output.count("Stopping (SIGTERM)") == 1, output
    assert "SIGTERM received" not in output and "Traceback" not in output and "Aborted" not in output
    assert "Interrupted:" in output
    time.sleep(2)
    assert not [pid for pid in ray_processes if Path(f"/proc/{pid}").exists()], "Ray's processes outlive the driver"
    before = _trials(tmp_path, "terminated")
    assert not any(t.state == TrialState.RUNNING for t in before)
    _finish(tmp_path, "terminated", demo_root)
    _assert_resumed(tmp_path, "terminated", before)
