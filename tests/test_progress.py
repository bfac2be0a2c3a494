"""The live view and `status` read storage: counts per arm, the best value, ETA, and an
interrupted trial (its driver stopped; it runs again) shown apart from a real failure."""

from __future__ import annotations

import io
import logging
import time
from datetime import datetime, timedelta

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from rich.console import Console
from typer.testing import CliRunner

from mmvit.cli import _CurrentStderr, app
from mmvit.study.progress import render, snapshot
from mmvit.storage.connection import open_storage

ARMS = ["model.depth=2", "model.depth=4"]


def _trial(arm: str, seed: int, state: TrialState, value: float | None = None, error: str | None = None):
    trial = create_trial(state=state, value=value, params={}, distributions={},
                         user_attrs={"arm": arm, "seed": seed, **({"error": error} if error else {})})
    if state.is_finished():  # every finished trial took a minute
        trial.datetime_start = datetime(2026, 11, 24, 12, 0)
        trial.datetime_complete = trial.datetime_start + timedelta(seconds=60)
    return trial


@pytest.fixture
def study_url(tmp_path):
    folder = tmp_path / "studies" / "watched"
    folder.mkdir(parents=True)
    url = f"sqlite:///{folder / 'optuna.db'}"
    study = optuna.create_study(study_name="watched", storage=open_storage(url), direction="maximize")
    study.set_user_attr("arms", [{"name": name} for name in ARMS])
    study.set_user_attr("profile", "quick")
    for trial in [_trial(ARMS[0], 0, TrialState.COMPLETE, 0.41), _trial(ARMS[0], 1, TrialState.COMPLETE, 0.47),
                  _trial(ARMS[1], 0, TrialState.FAIL, error="interrupted: its driver stopped"),
                  _trial(ARMS[1], 0, TrialState.RUNNING),
                  _trial(ARMS[1], 1, TrialState.FAIL, error="RuntimeError: loss is NaN")]:
        study.add_trial(trial)
    return url


def test_the_live_view_counts_each_arm_and_leaves_interrupted_trials_out(study_url):
    snap = snapshot(study_url, "watched", seeds=2, better=lambda a, b: a > b)
    first, second = snap.arms
    assert (first.final["COMPLETE"], first.best) == (2, 0.47)
    assert (second.final["RUNNING"], second.final["FAIL"]) == (1, 1), "the interrupted trial is not a failure"
    assert (snap.planned, snap.complete) == (4, 2)
    console = Console(record=True, width=200)
    console.print(render(snap, "watched", started=time.time() - 90, concurrency=2, search_budget=0))
    text = console.export_text()
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in text.splitlines() if line.startswith("│")}
    assert rows == {ARMS[0]: "2/0/0", ARMS[1]: "0/1/1"}
    # 2 of 4 points left, a minute each, 2 at a time
    assert "2/4 final trials complete · 1.5 min elapsed · ETA ≈ 1.0 min" in text


def test_the_live_view_wraps_a_long_title_on_the_clis_console(study_url):
    """The CLI's console soft-wraps (so long paths print whole); a live view on it cropped its
    title at 80 columns, cutting off the resources note. The whole title shows, folded."""
    from mmvit.study.progress import LiveView

    output = io.StringIO()
    console = Console(soft_wrap=True, markup=False, file=output, width=80)  # as mmvit.cli's, in a log
    with LiveView(study_url, "watched", seeds=2, direction="maximize", concurrency=1, search_budget=0,
                  console=console, interval=0.1, note="2 CPU per trial"):
        time.sleep(0.3)
    lines = output.getvalue().splitlines()
    assert lines and max(len(line) for line in lines) <= 80, lines
    assert "· 2 CPU per trial" in " ".join(output.getvalue().split()), output.getvalue()
    assert study_url.removeprefix("sqlite:///") in "".join(lines), "the storage path, folded, not cut"
    assert console.soft_wrap, "the console prints as before once the view is gone"


def test_the_live_view_counts_the_trials_the_profile_runs(monkeypatch):
    """A smoke run of tuned_fusion.yaml plans 6 final trials (first seed only), not the file's 18."""
    from pathlib import Path

    from mmvit.study import progress, runner
    from mmvit.study.spec import load_spec
    from mmvit.study.trial import SMOKE_SEARCH_TRIALS, StudyJob

    seen = {}

    class Recorder:
        def __init__(self, url, study_name, **kwargs):
            seen.update(kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(progress, "LiveView", Recorder)
    monkeypatch.setattr(runner, "concurrency", lambda job: 2)  # no Ray here
    spec = load_spec(Path(__file__).parent.parent / "search_spaces" / "tuned_fusion.yaml", check_models=False)
    assert (len(spec.seeds), spec.search.trials_per_arm) == (3, 20)
    for profile, seeds, budget in (("full", 3, 20), ("smoke", 1, SMOKE_SEARCH_TRIALS)):
        job = StudyJob(spec, "sqlite://", profile, None, "", spec.arms, resources={"cpu": 2.0, "gpu": 0.5})
        with runner._live_view(job, console=Console(file=io.StringIO())):
            assert (seen["seeds"], seen["search_budget"]) == (seeds, budget), profile
    assert seen["note"] == "0.5 GPU + 2 CPU per trial"


def test_status_labels_an_interrupted_trial_apart_from_a_failure(study_url, tmp_path):
    result = CliRunner().invoke(app, ["status", "watched", "--studies-dir", str(tmp_path / "studies")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [tuple(line.split()[:3]) for line in result.output.splitlines() if line.strip().startswith("model.")]
    assert sorted(rows) == sorted([(ARMS[0], "0", "COMPLETE"), (ARMS[0], "1", "COMPLETE"),
                                   (ARMS[1], "0", "INTERRUPTED"), (ARMS[1], "0", "RUNNING"),
                                   (ARMS[1], "1", "FAIL")])


def test_log_lines_follow_sys_stderr(monkeypatch):
    """rich's live view swaps sys.stderr for a proxy that prints above the table; a log handler
    that kept the original stream would write under the table and be drawn over."""
    logger = logging.getLogger("mmvit.test.current-stderr")
    handler = _CurrentStderr()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        before, during = io.StringIO(), io.StringIO()
        monkeypatch.setattr("sys.stderr", before)
        logger.warning("first")
        monkeypatch.setattr("sys.stderr", during)
        logger.warning("second")
    finally:
        logger.removeHandler(handler)
    assert before.getvalue() == "first\n" and during.getvalue() == "second\n"
