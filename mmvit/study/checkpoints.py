"""What a study keeps of its trials' checkpoints on disk, and when the rest goes.

A trial folder (``<checkpoints>/<phase>/<config key>/``, :mod:`mmvit.study.trial`) holds
``last.pt`` — the weights, Adam's two moments, the schedule and the history: about three times
the weights, and read only to resume — and ``best.pt``, the best validation epoch's weights.

* A trial told finished in storage (COMPLETE, or PRUNED by ASHA) has nothing left to resume, so
  its ``last.pt`` goes — after the tell, never before, so a crash between the two still resumes.
  A final trial's worker removes it (it tells its own state), a search trial's driver (which
  tells it). A failed trial keeps it: ``--retry-failed`` resumes from it.
* Once an arm's search is complete *in storage* (its whole budget finished, nothing running or
  waiting in any driver), nobody reads its trials' ``best.pt`` again — the best configuration is
  trained from scratch for every seed — so the driver removes those folders, unless
  ``run --keep-checkpoints``.
* Each run sweeps the ``last.pt`` that a crash between a tell and its removal left behind (and
  those of studies run before this rule), and records what the checkpoints hold in the study's
  storage (:attr:`StoredStudy.checkpoint_disk`), where the report reads it.

Standalone ``mmvit-study train --checkpoint-dir`` removes nothing: without a study storage the
folder *is* the record, so running the command again prints the finished result from it (and a
larger ``train.epochs`` trains on from the last epoch) instead of starting over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable

import optuna
from optuna.trial import TrialState

from mmvit.record_schema import StoredStudy, StoredTrial, write_study
from mmvit.storage.disk import DiskUsage, disk_usage, exists, format_bytes, remove_files, remove_folder
from mmvit.storage.shared_path import join

log = logging.getLogger(__name__)

RESUME_STATE = "last.pt"
"""mmvit.train.loop.CHECKPOINT, named here without importing torch (tests hold the two equal)."""
BEST_WEIGHTS = "best.pt"
"""mmvit.train.loop.BEST_WEIGHTS."""
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
"""Told states after which a trial never runs again: its resume state is dead weight."""
BUSY = (TrialState.RUNNING, TrialState.WAITING)


def kept_bytes(folder: Path) -> int:
    """Bytes a finished trial keeps in the local ``folder``: every file but its resume state."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file() and p.name != RESUME_STATE)


def finish_trial(folder: str) -> int:
    """Remove the resume state of a trial that storage holds as finished; returns the bytes freed.
    A failure is logged, never raised: the trial's results are already safe."""
    try:
        return remove_files(folder, [RESUME_STATE])
    except Exception as error:  # pyarrow raises OSError, ArrowInvalid … by store
        log.warning("Could not remove %s/%s of a finished trial: %s: %s", folder, RESUME_STATE,
                    type(error).__name__, error)
        return 0


def _keys(trials: Iterable[optuna.trial.FrozenTrial]) -> set[str]:
    return {key for t in trials if (key := StoredTrial.from_trial(t).config_key)}


def busy_keys(study: optuna.Study) -> set[str]:
    """Configurations a trial of ``study`` runs or waits to run, in any driver (stale ones too:
    their re-run resumes from the folder)."""
    return _keys(study.get_trials(deepcopy=False, states=BUSY))


def search_complete(study: optuna.Study, per_arm: int) -> bool:
    """Whether an arm's search is over in storage: ``per_arm`` trials used up its budget and none
    runs or waits, in this driver or another."""
    from mmvit.study.search import counts_as_done

    trials = study.get_trials(deepcopy=False)
    if any(t.state in BUSY for t in trials):
        return False
    return sum(counts_as_done(t, retry_failed=False) for t in trials) >= per_arm


def tidy_search(study: optuna.Study, checkpoints: str, *, keep: bool) -> int:
    """The checkpoints of an arm whose search is complete (:func:`search_complete`): every
    finished trial's folder goes (``keep``: only its resume state). Folders of failed trials stay
    for ``--retry-failed``. Returns the bytes freed."""
    finished, busy = _keys(study.get_trials(deepcopy=False, states=FINISHED)), busy_keys(study)
    freed = 0
    for key in sorted(finished - busy):
        folder = join(checkpoints, "search", key)
        try:
            if keep:
                freed += remove_files(folder, [RESUME_STATE])
                continue
            usage = disk_usage(folder, depth=0)
            if remove_folder(folder):
                freed += usage.bytes
        except Exception as error:
            log.warning("Could not remove the search checkpoints %s: %s: %s", folder, type(error).__name__, error)
    return freed


def sweep_resume_states(studies: list[optuna.Study], checkpoints: str, usage: DiskUsage) -> int:
    """Remove every ``<phase>/<key>/last.pt`` in ``usage`` (a listing with files) whose key only
    finished trials hold: left by a crash between a tell and the removal, or by a study run before
    finished trials dropped their resume state. Returns the bytes freed."""
    finished = set().union(*(_keys(s.get_trials(deepcopy=False, states=FINISHED)) for s in studies))
    busy = set().union(*(busy_keys(s) for s in studies))
    freed = 0
    for name in usage.files or {}:
        parts = name.split("/")
        if len(parts) == 3 and parts[2] == RESUME_STATE and parts[1] in finished - busy:
            freed += finish_trial(join(checkpoints, parts[0], parts[1]))
    return freed


def record_disk(study: optuna.Study, searches: list[optuna.Study], checkpoints: str) -> DiskUsage | None:
    """Sweep stale resume states, then measure the checkpoints and record the figure on the study
    (the report reads storage only). None, with a warning, when the store cannot be listed or the
    figure not recorded: a side record never fails a run."""
    try:
        usage = disk_usage(checkpoints, with_files=True)
        if sweep_resume_states([study, *searches], checkpoints, usage):
            usage = disk_usage(checkpoints)
        write_study(study, StoredStudy(checkpoint_disk={
            "path": checkpoints, "bytes": usage.bytes, "folders": usage.folders,
            "measured": datetime.now().isoformat(timespec="seconds")}))
    except Exception as error:
        log.warning("Could not measure or record the checkpoints at %s: %s: %s", checkpoints,
                    type(error).__name__, error)
        return None
    return usage


def _recorded(disk: dict | None) -> str:
    if not disk or "bytes" not in disk:
        return ""
    return (f"; the last run measured {format_bytes(disk['bytes'])} in {disk.get('folders', '?')} trial folders"
            f" ({str(disk.get('measured', '?')).replace('T', ' ')})")


def status_line(candidates: list[str], recorded: dict | None) -> str:
    """``checkpoints: 1.2 GB in 36 trial folders (studies/depth/checkpoints)``, measured now from
    the first candidate path that exists; where none is reachable from this machine, it says so
    (with the figure the last run recorded) instead of failing."""
    unreachable = []
    for path in dict.fromkeys(candidates):
        try:
            if exists(path):
                return f"checkpoints: {disk_usage(path).describe()}"
        except Exception as error:  # no credentials, no network, no such scheme …
            unreachable.append(f"{path} is not reachable from this machine "
                               f"({type(error).__name__}: {str(error).strip().splitlines()[0]})")
    first = unreachable[0] if unreachable else (f"none at {candidates[0]} (not on this machine, or none written "
                                                "yet; pass --storage-path if the study ran with one)")
    return f"checkpoints: {first}{_recorded(recorded)}"


def status_candidates(recorded: dict | None, default: str, explicit: str | None = None) -> list[str]:
    """Where ``status`` looks: ``--storage-path``'s folder if given, else the path the last run
    recorded, then the default under ``--studies-dir``."""
    if explicit is not None:
        return [explicit]
    return [p for p in ((recorded or {}).get("path"), default) if p]


# --- validate's estimate ----------------------------------------------------------------------

BYTES_PER_PARAMETER = 4
"""fp32: the weights stay fp32 under bf16 autocast."""
RESUME_FACTOR = 3
"""last.pt: the weights and Adam's two moments (exp_avg, exp_avg_sq) of every parameter."""


@dataclass(frozen=True)
class DiskEstimate:
    """Checkpoint disk a study plan needs: what stays, and what exists only while trials run."""

    best: list[tuple[int, int, int]]
    """Per arm: (best.pt bytes, final trials, search trials)."""
    keep: bool

    @property
    def kept(self) -> float:
        return sum(size * (final + (search if self.keep else 0)) for size, final, search in self.best)

    @property
    def search_while_running(self) -> float:
        """Search trials' best weights, until their arm's search ends (none with ``keep``: they stay)."""
        return 0.0 if self.keep else sum(size * search for size, _, search in self.best)

    @property
    def resume_per_trial(self) -> float:
        """The largest arm's last.pt, which a running trial holds until it finishes."""
        return max((size * RESUME_FACTOR for size, _, _ in self.best), default=0)

    def line(self) -> str:
        """``disk: ≈ 0.9 GB of checkpoints kept (36 final trials × 25 MB best weights); …``."""
        finals = sum(final for _, final, _ in self.best)
        searches = sum(search for _, _, search in self.best)
        each = _size_range([size for size, _, _ in self.best])
        trials = f"{finals} final" + (f" + {searches} search" if self.keep and searches else "")
        out = f"disk: ≈ {format_bytes(self.kept)} of checkpoints kept ({trials} trials × {each} best weights)"
        if self.search_while_running:
            out += (f"; up to {format_bytes(self.search_while_running)} more while the searches run "
                    f"({searches} search trials' best weights, removed when their arm's search ends)")
        return out + (f"; {format_bytes(self.resume_per_trial)} more per running trial (last.pt: weights + Adam "
                      "state, removed when it finishes)")


def _size_range(sizes: list[int]) -> str:
    """``25 MB``, or ``1.6–6.4 MB`` (``900 kB–1.2 MB``) where the arms differ."""
    low, high = format_bytes(min(sizes, default=0)), format_bytes(max(sizes, default=0))
    if low == high:
        return low
    if low.split()[1] == high.split()[1]:
        return f"{low.split()[0]}–{high}"
    return f"{low}–{high}"


def estimate_disk(plan, *, keep: bool = False) -> DiskEstimate:
    """From a :class:`mmvit.study.plan.StudyPlan`: best.pt ≈ parameters × 4 bytes per trial."""
    return DiskEstimate([(a.parameters * BYTES_PER_PARAMETER, a.seed_trials, a.search_trials) for a in plan.arms], keep)
