"""Ctrl-C in a study driver: the first stops gracefully (wherever the driver is), the second at once."""

from __future__ import annotations

import os
import signal
import threading
import time

import optuna

from mmvit.study.runner import run_study
from mmvit.study.stopping import StopRequest
from mmvit.storage.connection import open_storage, storage_url


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # the handler runs on the main thread at its next bytecode


def test_first_ctrl_c_asks_to_stop_and_the_second_stops_at_once(monkeypatch):
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    before = signal.getsignal(signal.SIGINT)
    previous_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # no Tuner.fit has run: nothing to forward to
    try:
        with StopRequest() as stop:
            assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1", "the driver, not Tune, owns Ctrl-C"
            _ctrl_c()
            assert stop.requested
            try:
                _ctrl_c()
            except KeyboardInterrupt:
                pass
            else:
                raise AssertionError("a second Ctrl-C must stop at once")
    finally:
        signal.signal(signal.SIGUSR1, previous_usr1)
    assert signal.getsignal(signal.SIGINT) is before
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_the_first_ctrl_c_reaches_the_running_fit():
    """Tune registers its stop handler on SIGUSR1 for every fit; the first Ctrl-C is handed to it."""
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        with StopRequest():
            _ctrl_c()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert received == [signal.SIGUSR1]


def test_a_wait_between_fits_wakes_on_ctrl_c():
    with StopRequest() as stop:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        stop.sleep(30)
        assert stop.requested and time.monotonic() - started < 2


SPEC = """\
study: halted
ablate:
  model.fusion: [early, sct, modality_token]
seeds: [0]
base:
  model: {patch_size: 30, depth: 1, embed_dim: 32, num_heads: 2}
  train: {epochs: 4, batch_size: 32}
  data: {num_workers: 0}
resources: {cpu: 1}
max_concurrent: 1
"""


def _run_halted(tmp_path, demo_root):
    path = tmp_path / "halted.yaml"
    path.write_text(SPEC)
    return run_study(path, studies_dir=tmp_path / "studies", data=str(demo_root), profile="full", reports_dir=None)


def test_a_stop_with_nothing_left_running_ends_the_run(ray_session, tmp_path, demo_root, monkeypatch):
    """A Ctrl-C that lands when none of this driver's trials is RUNNING (the last one finished as
    the stop arrived, the next not started) used to go unnoticed: the driver saw points left to
    do and started a new fit. Here the fit is stopped before it runs anything."""
    import mmvit.study.runner as runner

    fits = []

    class StoppedBeforeAnyTrial:
        def fit(self):
            fits.append(1)
            assert len(fits) == 1, "the driver started another fit after the stop"
            _ctrl_c()
            return []

    monkeypatch.setattr(runner, "_tuner", lambda *args, **kwargs: StoppedBeforeAnyTrial())
    summary = _run_halted(tmp_path, demo_root)
    assert fits == [1]
    assert summary.stopped and summary.left == 3 and summary.interrupted == 0
    study = optuna.load_study(study_name="halted", storage=open_storage(storage_url("halted", tmp_path / "studies")))
    assert study.get_trials() == []


def test_a_stop_just_before_a_fit_starts_runs_no_fit(ray_session, tmp_path, demo_root, monkeypatch):
    """A Ctrl-C while the driver prepares a fit (ordering the points, building the Tuner) has no
    fit to hear it yet: the driver must not start one afterwards."""
    import mmvit.study.runner as runner

    fits = []

    class NeverToRun:
        def fit(self):
            fits.append(1)
            return []

    def tuner_after_a_ctrl_c(*args, **kwargs):
        _ctrl_c()
        return NeverToRun()

    monkeypatch.setattr(runner, "_tuner", tuner_after_a_ctrl_c)
    summary = _run_halted(tmp_path, demo_root)
    assert fits == [] and summary.stopped and summary.left == 3
