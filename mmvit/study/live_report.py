"""Keeps ``reports/<study>/`` current while a study runs: rebuilt after trials finish.

A thread watches the number of finished trials in storage (main and search studies) and
rebuilds the report when it changes — at most every ``min_interval`` seconds, so a study of
thousands of short trials does not spend its CPUs on reports — and once more at the end.
A failing build is logged, never allowed to stop the study.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from mmvit.record_schema import StoredStudy
from mmvit.storage.connection import open_storage

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def finished_trials(url: str, study_name: str) -> int:
    storage = open_storage(url)
    main = optuna.load_study(study_name=study_name, storage=storage)
    count = len(main.get_trials(deepcopy=False, states=FINISHED))
    for name in StoredStudy.from_study(main).search_studies or []:
        try:
            count += len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False, states=FINISHED))
        except KeyError:
            pass
    return count


class LiveReport:
    def __init__(self, url: str, study_name: str, out_dir: Path, *, interval: float = 5.0,
                 min_interval: float = 10.0) -> None:
        self.url, self.study_name, self.out_dir = url, study_name, Path(out_dir)
        self.interval, self.min_interval = interval, min_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.builds = 0
        self.index: Path | None = None

    def build(self) -> None:
        from mmvit.report.build import build_report

        try:
            self.index = build_report(self.study_name, self.url, self.out_dir)
            self.builds += 1
        except Exception as error:  # a report problem must never stop or fail the study
            log.warning("Could not write the report %s: %s: %s", self.out_dir, type(error).__name__, error)

    def _loop(self) -> None:
        seen, last_build = -1, 0.0
        while not self._stop.wait(self.interval):
            try:
                count = finished_trials(self.url, self.study_name)
            except Exception:  # storage busy: try again next round
                continue
            if count != seen and time.time() - last_build >= self.min_interval:
                self.build()
                seen, last_build = count, time.time()

    def __enter__(self) -> LiveReport:
        self._thread = threading.Thread(target=self._loop, name="mmvit-report", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)
        self.build()
