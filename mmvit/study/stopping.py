"""Ctrl-C for a study driver: the first one stops the study gracefully (running trials stop and
are recorded interrupted, trials not started stay to do, the same command resumes), a second
one stops at once (KeyboardInterrupt).

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
from types import FrameType

log = logging.getLogger(__name__)


class StopRequest:
    """``with StopRequest() as stop:`` … ``if stop.requested: break``. Outside the main thread
    (where signals cannot be handled) it never fires and Tune keeps its own handler."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None
        self._tune_setting: str | None = None
        self._installed = False

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._tune_setting = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if not self._installed:
            return
        if self._previous is not None:  # None: a handler installed outside Python, nothing to restore
            signal.signal(signal.SIGINT, self._previous)
        if self._tune_setting is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._tune_setting

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Stopping: running trials stop after their current step and resume from their last "
                    "epoch checkpoint when you run the same command again. Press Ctrl-C again to stop at once.")
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if callable(tune_stop):  # inside (or after) a Tuner.fit; before the first one there is nothing to stop
            tune_stop(signal.SIGUSR1, frame)

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake within a fraction of a second of a stop request."""
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
