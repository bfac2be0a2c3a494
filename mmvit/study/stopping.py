"""Ctrl-C for a study driver: the first one stops the study gracefully (running trials stop and
are recorded interrupted, trials not started stay to do, the same command resumes), a second
one stops at once (KeyboardInterrupt).

SIGTERM means the same: it is what SLURM sends at a job's time limit (or, with ``--signal``,
minutes before it), at preemption and on ``scancel``, and what ``kill`` and container runtimes
send. Ray's core worker installs a native handler for it when the driver joins Ray (a stack dump
and abort, exit 134), so ``ray.init`` runs inside :func:`keep_stop_handlers`.

Ray Tune's own SIGINT handler covers only the inside of one ``Tuner.fit``, and afterwards nobody
can tell whether the fit ended because of it. A study driver runs several fits and waits between
them (for another driver's trials), so it owns SIGINT for the whole run and hands the first one
to the running fit through SIGUSR1, which Tune registers for every fit as its stop signal."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
NATIVE_HANDLER_SWITCH = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"


class StopRequest:
    """``with StopRequest() as stop:`` … ``if stop.requested: break``. Outside the main thread
    (where signals cannot be handled) it never fires and Tune keeps its own handler."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        """The signal that asked for the stop (``SIGINT``, ``SIGTERM``), for the job's record."""
        self._previous: dict[int, object] = {}
        self._tune_setting: str | None = None
        self._installed = False

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
            self._tune_setting = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            self._installed = True
            for number in STOP_SIGNALS:
                signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        if not self._installed:
            return
        for number, previous in self._previous.items():
            # None: a handler installed outside Python, nothing to restore
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        if self._tune_setting is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._tune_setting

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        again = "Press Ctrl-C again" if signum == signal.SIGINT else "Send it again"
        log.warning("Stopping (%s): running trials stop after their current step and resume from their last "
                    "epoch checkpoint when you run the same command again. %s to stop at once.",
                    self.signal_name, again)
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if callable(tune_stop):  # inside (or after) a Tuner.fit; before the first one there is nothing to stop
            tune_stop(signal.SIGUSR1, frame)

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake within a fraction of a second of a stop request."""
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


@contextmanager
def keep_stop_handlers() -> Iterator[None]:
    """Around ``ray.init``: the Python handlers of SIGINT and SIGTERM stay the ones in force.
    Ray's core worker installs absl's failure handler on SIGTERM (a stack dump, then abort) unless
    ``RAY_DISABLE_FAILURE_SIGNAL_HANDLER`` is set when it starts, so it is set for the call (Ray
    processes started meanwhile, a local cluster's, inherit it: their crashes print no native
    stack); the handlers are put back afterwards in any case."""
    saved = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    setting = os.environ.get(NATIVE_HANDLER_SWITCH)
    os.environ[NATIVE_HANDLER_SWITCH] = "1"
    try:
        yield
    finally:
        if setting is None:
            os.environ.pop(NATIVE_HANDLER_SWITCH, None)
        else:
            os.environ[NATIVE_HANDLER_SWITCH] = setting
        if threading.current_thread() is threading.main_thread():
            for number, handler in saved.items():
                if handler is not None:  # None: installed outside Python; nothing to put back
                    signal.signal(number, handler)
