"""Two `mmvit-study run` processes on one study and one storage at the same time (SQLite and a
real PostgreSQL server): every point runs exactly once, neither driver takes the other's live
trials for a dead driver's, both return with the study complete."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mmvit.storage.connection import open_storage
from tests.pg_server import postgres_url  # noqa: F401 (the fixture)
from tests.test_postgres import CLI, ENV

NAME = "two-drivers"
POINTS = 12  # 4 arms × 3 seeds: the first driver still has ~10 left when the second has started Ray
SPEC = """\
study: two-drivers
ablate:
  model.fusion: [early, sct, modality_token, channel_token]
seeds: [0, 1, 2]
base:
  model: {patch_size: 30, depth: 1, embed_dim: 32, num_heads: 2}
  train: {epochs: 30, batch_size: 32}
  data: {num_workers: 0}
resources: {cpu: 1}
max_concurrent: 1
"""


def _start(tmp_path: Path, url: str, demo_root: Path, name: str) -> subprocess.Popen:
    command = [CLI, "run", str(tmp_path / "study.yaml"), "--storage", url, "--data", str(demo_root),
               "--profile", "full", "--studies-dir", str(tmp_path / "studies"), "--reports-dir",
               str(tmp_path / f"reports-{name}")]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env=ENV)


def _trials(storage) -> list:
    try:
        return optuna.load_study(study_name=NAME, storage=storage).get_trials()
    except KeyError:
        return []


def _one_driver_outlasted_the_other(complete: list, margin_s: float = 20.0) -> bool:
    """Whether the stored timeline forces one driver to wait: the other's last trial was already
    running when its own last trial ended and went on for `margin_s` more (far longer than a Tune
    run takes to return and look again). When both drivers finish within moments of each other,
    neither has anything to wait for, and that is a correct run too."""
    last = {}
    for trial in complete:
        driver = trial.user_attrs["driver"]
        if driver not in last or trial.datetime_complete > last[driver].datetime_complete:
            last[driver] = trial
    early, late = sorted(last.values(), key=lambda t: t.datetime_complete)
    return (late.datetime_start < early.datetime_complete
            and (late.datetime_complete - early.datetime_complete).total_seconds() > margin_s)


@pytest.mark.timeout(400)
# Two CLI drivers end to end take ~50 s a backend: slow-marked (the default suite's budget);
# tests/test_claims.py runs the claim and heartbeat rules on both backends by default.
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_drivers_on_one_study_run_every_point_once(backend, request, tmp_path, demo_root):
    (tmp_path / "study.yaml").write_text(SPEC)
    url = f"sqlite:///{tmp_path / 'shared.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    storage = open_storage(url)
    first = _start(tmp_path, url, demo_root, "first")
    deadline = time.time() + 120
    while not any(t.state == TrialState.RUNNING for t in _trials(storage)):  # the first is mid-study
        assert first.poll() is None and time.time() < deadline, first.stdout.read() if first.poll() is not None else ""
        time.sleep(0.2)
    second = _start(tmp_path, url, demo_root, "second")
    outputs = [process.communicate(timeout=300)[0] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs

    trials = _trials(storage)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    points = [(t.user_attrs["arm"], t.user_attrs["seed"]) for t in complete]
    assert len(points) == POINTS and len(set(points)) == POINTS, "every point COMPLETE exactly once"
    drivers = {t.user_attrs["driver"] for t in complete}
    assert len(drivers) == 2, f"both drivers ran trials: {drivers}"
    for trial in trials:
        if trial.state == TrialState.FAIL:  # only a claim that lost a race to the other driver
            assert "another driver runs this point" in trial.user_attrs["error"], trial.user_attrs["error"]
            assert "history" not in trial.user_attrs, "a claim that lost stood down before training"
        assert trial.state != TrialState.RUNNING
    assert not any("its driver stopped" in str(t.user_attrs.get("error")) for t in trials), \
        "no driver took the other's live trials for a dead driver's"
    if _one_driver_outlasted_the_other(complete):
        assert "waiting for them" in outputs[0] + outputs[1], "the driver that ran out of work waited for the other"
    for output in outputs:  # each summary accounts for every point: before it, by it, by the other
        counts = re.search(r"planned: (\d+) already done, (\d+) run now, (\d+) by another driver", output)
        assert counts and sum(map(int, counts.groups())) == POINTS, output
    # Each returned with the study complete: its last report has every arm's seed.
    for name in ("first", "second"):
        page = (tmp_path / f"reports-{name}" / NAME / "index.html").read_text()
        assert f"{POINTS} complete" in page and "seeds complete" not in page, name
