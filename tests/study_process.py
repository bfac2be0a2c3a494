"""Helpers for tests that drive `mmvit-study run` as a real process and stop it mid-study."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable

import optuna
import pytest
from optuna.trial import TrialState


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), so a kill takes Ray's daemons and workers too."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_mid_study(load_study: Callable[[], optuna.Study], process: subprocess.Popen, epochs: int,
                   timeout: float = 180) -> list[optuna.trial.FrozenTrial]:
    """Until one trial is COMPLETE and another RUNNING has finished an epoch but is at least 15
    epochs from its last (one about to finish may complete before the stop reaches it).

    With the test studies' ~0.06 s epochs that window lasts about a second, so the study is
    loaded once and then polled every 50 ms (a poll takes milliseconds; loading it, ~0.2 s)."""
    deadline = time.time() + timeout
    study = None
    while time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        if study is None:
            try:
                study = load_study()
            except KeyError:  # the driver has not created it yet
                time.sleep(0.3)
                continue
        trials = study.get_trials()
        if any(t.state == TrialState.COMPLETE for t in trials) and any(
                t.state == TrialState.RUNNING and 1 <= len(t.user_attrs.get("history", [])) <= epochs - 15
                for t in trials):
            return trials
        time.sleep(0.05)
    pytest.fail("the study never reached the middle")
