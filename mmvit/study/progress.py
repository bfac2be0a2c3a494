"""The live view of a running study, drawn from Optuna storage (the same truth ``status`` and
the report read), so it shows what every driver on the study has done, not one process's view.
Titles and arm names are :class:`rich.text.Text`: they print as written, brackets and all.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mmvit.record_schema import StoredStudy, StoredTrial
from mmvit.storage.connection import open_storage, redact
from mmvit.study.claims import was_interrupted


@dataclass
class ArmProgress:
    name: str
    final: Counter = field(default_factory=Counter)
    search: Counter = field(default_factory=Counter)
    best: float | None = None


@dataclass
class Snapshot:
    arms: list[ArmProgress]
    planned: int
    complete: int
    trial_seconds: list[float]


def snapshot(url: str, study_name: str, seeds: int, better) -> Snapshot:
    """Counts by state per arm, best validation value so far, finished trials' durations."""
    storage = open_storage(url)
    main = optuna.load_study(study_name=study_name, storage=storage)
    recorded = StoredStudy.from_study(main)
    names = [a.name for a in recorded.arms or []]
    arms = {name: ArmProgress(name) for name in names}
    seconds: list[float] = []

    def add(trial, counter_of) -> None:
        arm = arms.get(StoredTrial.from_trial(trial).arm)
        if arm is None or was_interrupted(trial):  # not a failure: the point runs again
            return
        counter_of(arm)[trial.state.name] += 1
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            arm.best = trial.value if arm.best is None or better(trial.value, arm.best) else arm.best
        if trial.datetime_complete and trial.datetime_start:
            seconds.append((trial.datetime_complete - trial.datetime_start).total_seconds())

    for trial in main.get_trials(deepcopy=False):
        add(trial, lambda a: a.final)
    for name in recorded.search_studies or []:
        try:
            search = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        for trial in search.get_trials(deepcopy=False):
            add(trial, lambda a: a.search)
    complete = sum(a.final["COMPLETE"] for a in arms.values())
    return Snapshot(list(arms.values()), len(names) * seeds, complete, seconds)


def render(snap: Snapshot, title: str, started: float, concurrency: int, search_budget: int) -> Group:
    columns = ["arm", "final done/run/fail", *(["search done/pruned/run/fail"] if search_budget else []), "best val"]
    table = Table(*columns, expand=False)
    for arm in snap.arms:
        search = [f"{arm.search['COMPLETE']}/{arm.search['PRUNED']}/{arm.search['RUNNING']}/{arm.search['FAIL']}"]
        table.add_row(Text(arm.name), f"{arm.final['COMPLETE']}/{arm.final['RUNNING']}/{arm.final['FAIL']}",
                      *(search if search_budget else []), "—" if arm.best is None else f"{arm.best:.4f}")
    elapsed = time.time() - started
    left = snap.planned - snap.complete + sum(max(0, search_budget - a.search["COMPLETE"] - a.search["PRUNED"])
                                              for a in snap.arms)
    eta = ""
    if snap.trial_seconds and left:
        mean = sum(snap.trial_seconds) / len(snap.trial_seconds)
        eta = f" · ETA ≈ {mean * left / max(1, concurrency) / 60:.1f} min"
    line = Text(f"{snap.complete}/{snap.planned} final trials complete · {elapsed / 60:.1f} min elapsed{eta}")
    # the title above the table, not its caption: a long storage URL folds at the console's
    # width instead of at the table's
    return Group(Text(title, overflow="fold"), table, line)


class LiveView:
    """Redraws the study's progress every ``interval`` s in a thread while the study runs."""

    def __init__(self, url: str, study_name: str, *, seeds: int, direction: str, concurrency: int,
                 search_budget: int, console: Console | None = None, interval: float = 2.0,
                 note: str | None = None) -> None:
        """``seeds`` and ``search_budget``: what this run plans per arm (its profile's), so the count
        ends at n/n; ``note`` is added to the title (the run's resources per trial)."""
        better = (lambda a, b: a > b) if direction == "maximize" else (lambda a, b: a < b)
        self._args = (url, study_name, seeds, better)
        self._title = f"{study_name} — {redact(url)}" + (f" · {note}" if note else "")
        self._concurrency, self._budget, self._interval = concurrency, search_budget, interval
        self._console = console or Console()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.time()

    def _draw(self) -> Group | Text:
        try:
            return render(snapshot(*self._args), self._title, self._started, self._concurrency, self._budget)
        except Exception as error:  # storage busy or not yet written: keep the study running
            return Text(f"(progress unavailable: {type(error).__name__})")

    def _loop(self) -> None:
        with Live(self._draw(), console=self._console, refresh_per_second=1, transient=False) as live:
            while not self._stop.wait(self._interval):
                live.update(self._draw())
            live.update(self._draw())

    def __enter__(self) -> LiveView:
        # the CLI's console soft-wraps (long paths stay on one line when printed), and a live
        # display on such a console crops every line at its width: the view wraps instead
        self._soft_wrap, self._console.soft_wrap = self._console.soft_wrap, False
        self._thread = threading.Thread(target=self._loop, name="mmvit-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._console.soft_wrap = self._soft_wrap
        if not self._console.is_terminal:
            self._console.line()  # rich leaves a non-terminal's last line open
