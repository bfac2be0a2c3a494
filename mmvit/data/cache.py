"""One-time conversion of an archive split into memory-mapped arrays.

Reading twelve GeoTIFFs per patch caps a data loader at a few hundred patches per second; a
training run at batch 1024 for 60 epochs needs far more. So each split is converted once, in
parallel, into ``.npy`` files that DataLoader workers memory-map:

    <cache_dir>/<archive identity>/<split>-<hash of its patch list>/
        index.json                      the patch names, row by row
        labels.npy                      uint8   (N, 19)
        s2-<resampling>.npy             uint16  (N, 10, 120, 120)   all ten thesis bands
        s1-<speckle filter>-<dtype>.npy float32 or float16 (N, 2, 120, 120), dB
        <component>.valid.npy           bool (N,): False for patches skipped as unreadable
        <component>.json                written last: marks the component complete; holds the
                                        per-channel statistics and the skipped patches

Each *component* is keyed by what changes its content, so an ablation over speckle filters
adds one small S1 file per filter and shares the S2 file. Speckle filtering happens here, once.
Writes go to ``*.partial`` files renamed into place, and the JSON comes last: an interrupted
conversion never leaves a component that looks complete. A file lock lets several trials on one
machine ask for the same cache at once; one converts, the others wait.

**Resuming.** Patches are converted in chunks of :data:`CHUNK` rows, and each component keeps a
journal of its finished chunks beside its partial file: ``<component>.chunks.jsonl`` (one per
shard with ``--shard K/N``: ``<component>.chunks-K-of-N.jsonl``), one JSON line per chunk with its
first row, row count, unreadable rows, skipped patches and the chunk's statistics sums (floats
written exactly). A line is appended and fsynced only after the chunk's rows are fsynced, so a
recorded chunk is on disk; a line torn by a kill is ignored. A rerun reopens a partial file whose
header (dtype, shape) matches and converts only the chunks some requested component lacks; a
partial file that does not match is recreated and its journals deleted. Journals are per
component, not per set of components: a rerun that asks for another set (labels + S1 of another
speckle filter after a half-done labels + S2 + S1) continues the labels and starts the new S1.
Finalising reads every journal and merges the statistics in chunk order, never in completion
order, so a resumed or sharded build writes the same arrays and JSON as an uninterrupted one.

**Shards** (a SLURM job array): shard K of N converts the chunks whose index i has
``i % N == K - 1`` (round robin: all shards move through the split together). A shard holds the
lock only to create or check the partial files and, at its end, to finalise; in between it writes
its own rows and its own journal file. Rows are written with ``pwrite`` of whole chunks and
fsynced, not through a writable memory map: over NFS a memory-mapped page is written back whole,
and the page two chunks share would carry one shard's stale copy of the other's bytes. The shard that finds every chunk recorded finalises; so does a
later run without ``--shard``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from filelock import FileLock

from mmvit.data.archive import Archive, PatchRef
from mmvit.data.bands import PATCH_SIZE, S1_BANDS, S2_BANDS
from mmvit.data.cache_index import PatchList, PatchNames, open_recorded, pointer_path, read_index, write_index, write_pointer
from mmvit.data.labels import NUM_CLASSES
from mmvit.data.patch_reader import PatchReader
from mmvit.data.stats import ChannelStats, ChannelStatsAccumulator
from mmvit.errors import DataError

CACHE_VERSION = 1
S1_DTYPES = ("float32", "float16")
CHUNK = 128
log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$MMVIT_CACHE_DIR``, else ``~/.cache/mmvit-study/cache``."""
    env = os.environ.get("MMVIT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mmvit-study" / "cache"


@dataclass(frozen=True)
class Component:
    """One cached array: its file stem, element type and per-row shape."""

    name: str
    dtype: str
    row_shape: tuple[int, ...]
    has_stats: bool

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape)) * np.dtype(self.dtype).itemsize


def labels_component() -> Component:
    return Component("labels", "uint8", (NUM_CLASSES,), has_stats=False)


def s2_component(resampling: str) -> Component:
    return Component(f"s2-{resampling}", "uint16", (len(S2_BANDS), PATCH_SIZE, PATCH_SIZE), True)


def s1_component(speckle_filter: str, dtype: str) -> Component:
    if dtype not in S1_DTYPES:
        raise DataError(f"s1_dtype must be one of {', '.join(S1_DTYPES)}, but got {dtype!r}.")
    return Component(f"s1-{speckle_filter}-{dtype}", dtype, (len(S1_BANDS), PATCH_SIZE, PATCH_SIZE), True)


@dataclass
class LoadedComponent:
    array: np.ndarray
    valid: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def stats(self) -> ChannelStats | None:
        raw = self.meta.get("stats")
        return ChannelStats.from_dict(raw) if raw else None


def split_components(modalities: str, resampling: str = "bilinear", speckle_filter: str = "none",
                     s1_dtype: str = "float32") -> tuple[list[Component], PatchReader]:
    """The components a dataset of ``modalities`` caches, and the reader that fills them (as
    :class:`~mmvit.data.bigearthnet.BigEarthNetMM` builds them: RGB is cached as all ten bands)."""
    from mmvit.data.bands import MODALITIES, optical_bands, uses_s1

    if modalities not in MODALITIES:
        raise DataError(f"modalities must be one of {', '.join(MODALITIES)}, but got {modalities!r}.")
    optical, with_s1 = bool(optical_bands(modalities)), uses_s1(modalities)
    components = [labels_component()]
    if optical:
        components.append(s2_component(resampling))
    if with_s1:
        components.append(s1_component(speckle_filter, s1_dtype))
    return components, PatchReader(S2_BANDS if optical else (), resampling, with_s1, speckle_filter)


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)``; the message names the option because the CLI passes it as typed."""
    part, sep, parts = text.partition("/")
    try:
        shard = (int(part), int(parts))
    except ValueError:
        shard = (0, 0)
    if not sep or not 1 <= shard[0] <= shard[1]:
        raise DataError(
            f"--shard takes K/N, part K of N with 1 <= K <= N (part K converts the chunks whose "
            f"index modulo N is K - 1), but got {text!r}. In a SLURM job array run "
            "`--array=1-N` with `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT` (task ids "
            "must start at 1), or leave --shard out to convert the whole split in one process."
        )
    return shard


@dataclass(frozen=True)
class _Target:
    """Where one component's rows go: its partial file and the byte offset of row 0."""

    path: str
    offset: int
    dtype: str
    row_shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class _Job:
    reader: PatchReader
    refs: list[PatchRef]
    start: int
    targets: dict[str, _Target]  # the components that still lack this chunk
    skip_unreadable: bool


@dataclass
class _ChunkResult:
    start: int
    valid: np.ndarray
    skipped: list[tuple[str, str]]
    stats: dict[str, ChannelStatsAccumulator]


def array_key(component: str) -> str:
    """The PatchReader output a component stores: "label", "s2" or "s1"."""
    kind = component.split("-", 1)[0]
    return "label" if kind == "labels" else kind


def _write_rows(target: _Target, start: int, rows: np.ndarray) -> None:
    """Write a chunk's rows as one byte range and fsync them (before the chunk is recorded)."""
    data = memoryview(np.ascontiguousarray(rows, dtype=target.dtype)).cast("B")
    position = target.offset + start * target.row_bytes
    fd = os.open(target.path, os.O_WRONLY)
    try:
        while data:
            written = os.pwrite(fd, data, position)
            data, position = data[written:], position + written
        os.fsync(fd)
    finally:
        os.close(fd)


def _convert_chunk(job: _Job) -> _ChunkResult:
    """Read a run of patches and write their rows into the partial files (zeros for skipped
    patches, whatever a reused partial file held there)."""
    outputs = {name: np.zeros((len(job.refs), *t.row_shape), dtype=t.dtype)
               for name, t in job.targets.items()}
    valid = np.ones(len(job.refs), dtype=bool)
    skipped: list[tuple[str, str]] = []
    stats = {
        name: ChannelStatsAccumulator(out.shape[1])
        for name, out in outputs.items() if array_key(name) != "label"
    }
    for offset, ref in enumerate(job.refs):
        try:
            arrays = job.reader(ref)
        except DataError as error:
            if not job.skip_unreadable:
                raise
            valid[offset] = False
            skipped.append((ref.patch, str(error)))
            continue
        for name, out in outputs.items():
            value = arrays[array_key(name)]
            out[offset] = value
            if name in stats:
                stats[name].update(value)
    for name, out in outputs.items():
        _write_rows(job.targets[name], job.start, out)
    return _ChunkResult(job.start, valid, skipped, stats)


def _record(result: _ChunkResult, name: str) -> str:
    """The journal line of one finished chunk of one component (JSON floats round-trip exactly)."""
    accumulator = result.stats.get(name)
    stats = None if accumulator is None else {
        "count": accumulator.count, "total": accumulator.total.tolist(),
        "squares": accumulator.squares.tolist(), "low": accumulator.low.tolist(),
        "high": accumulator.high.tolist(),
    }
    return json.dumps({"start": result.start, "rows": len(result.valid),
                       "invalid": np.flatnonzero(~result.valid).tolist(),
                       "skipped": [list(item) for item in result.skipped], "stats": stats}) + "\n"


def _accumulator(stats: dict) -> ChannelStatsAccumulator:
    """A chunk's accumulator back from its journal line."""
    accumulator = ChannelStatsAccumulator(len(stats["total"]))
    accumulator.count = stats["count"]
    for key, attribute in (("total", "total"), ("squares", "squares"), ("low", "low"), ("high", "high")):
        setattr(accumulator, attribute, np.asarray(stats[key], dtype=np.float64))
    return accumulator


def _read_journals(paths: list[Path], chunks: dict[int, int]) -> dict[int, dict]:
    """First row -> record of every chunk the journals hold, for the current chunking only.

    Lines without their newline are being written or were torn by a kill: not recorded.
    """
    records: dict[int, dict] = {}
    for path in paths:
        try:
            lines = path.read_text().splitlines(keepends=True)
        except FileNotFoundError:  # a finalising process removed it
            continue
        for line in lines:
            try:
                record = json.loads(line) if line.endswith("\n") else None
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and chunks.get(record.get("start")) == record.get("rows"):
                records.setdefault(record["start"], record)
    return records


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class _ProgressLines:
    """Plain progress lines on stderr, for logs (a SLURM job's): every 5 % or minute, and at the
    end. The rate counts this run's patches only, not the chunks earlier runs converted."""

    def __init__(self, label: str, done: int, total: int, every_s: float = 60.0) -> None:
        self.label, self.done, self.total, self.every_s = label, done, total, every_s
        self.resumed, self.started = done, time.monotonic()
        self.last_done, self.last_time = done, self.started

    def advance(self, patches: int) -> None:
        self.done += patches
        now = time.monotonic()
        if self.done - self.last_done >= 0.05 * self.total or now - self.last_time >= self.every_s:
            self.emit(now)

    def emit(self, now: float) -> None:
        self.last_done, self.last_time = self.done, now
        rate = (self.done - self.resumed) / max(now - self.started, 1e-9)
        left = (f"{_duration((self.total - self.done) / rate)} left" if self.done < self.total
                else f"done in {_duration(now - self.started)}") if rate > 0 else "rate unknown"
        resumed = f" (resumed at {self.resumed:,})" if self.resumed else ""
        print(f"{self.label}: {self.done:,} / {self.total:,} patches ({100 * self.done / self.total:.1f} %), "
              f"{rate:,.0f} patches/s, {left}{resumed}", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.last_done != self.done:
            self.emit(time.monotonic())


@contextmanager
def _progress_bar(label: str, done: int, total: int) -> Iterator[Callable[[int], None]]:
    """A rich bar with patches/s; resumed patches start it, so its rate is this run's."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                               TimeRemainingColumn)
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("– patches/s" if speed is None else f"{speed:,.0f} patches/s",
                        style="progress.data.speed")

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               "patches", RateColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda patches: bar.advance(task, patches)


@contextmanager
def _progress(mode: bool, label: str, done: int, total: int) -> Iterator[Callable[[int], None]]:
    """``mode`` True: a live bar on a terminal, plain lines on stderr otherwise; False: nothing."""
    message = f"{label}: resuming, {done:,} of {total:,} patches already converted by earlier runs"
    if not mode:
        if done:
            log.info(message)
        yield lambda patches: None
        return
    if done:
        print(message, file=sys.stderr, flush=True)
    import rich

    if rich.get_console().is_terminal:
        with _progress_bar(label, done, total) as advance:
            yield advance
        return
    lines = _ProgressLines(label, done, total)
    if not done:
        print(f"{label}: {total:,} patches to convert", file=sys.stderr, flush=True)
    yield lines.advance
    lines.finish()


class SplitCache:
    """The cache of one archive split; :meth:`ensure` converts what is missing.

    Its patch list comes from the cache's own index when the split's pointer says the archive
    has not changed since it was last listed (:mod:`mmvit.data.cache_index`); otherwise from a
    listing of the archive, after which the pointer is written. ``names`` holds the names,
    ``refs`` the :class:`PatchRef` s (built on demand on the fast path), ``presence`` the
    split's presence."""

    def __init__(self, archive: Archive, split: str, cache_dir: Path | None = None,
                 *, exclude: bool = True) -> None:
        self.archive = archive
        self.split = split
        self._exclude = exclude
        self._base = Path(cache_dir or default_cache_dir()) / archive.identity()
        recorded = open_recorded(archive, split, exclude, self._base)
        if recorded is not None:
            self.dir, self.names, self.presence = recorded.dir, recorded.names, recorded.presence
            self.refs = PatchList(archive, self.names)
            self._stamp = None  # the pointer is current
            archive.adopt_presence(self.presence, exclude=exclude)
            return
        self.refs = archive.patches(split, exclude=exclude)
        self.presence = archive.presence(split, exclude=exclude)
        self._stamp = archive.listing_stamp(split, exclude=exclude)
        if not self.refs:
            raise DataError(
                f"The {split!r} split of the {archive.describe()} holds no patches "
                f"({self.presence.describe()}; split lists from "
                f"{archive.split_source}). Put the split's patches under the root, or check the "
                "split name and the lists."
            )
        self.names = PatchNames.from_refs(self.refs)
        self.dir = self._base / f"{split}-{self.names.digest()}"
        self._record_listing()

    def _record_listing(self) -> None:
        """Point the split at this folder if it holds its index (repaired if broken); a folder
        still to be built gets its pointer from :meth:`_write_index` when the build finishes."""
        if not self.dir.is_dir():
            return
        try:
            intact = read_index(self.dir / "index.json") == self.names
        except (OSError, ValueError):
            intact = False
        if intact:
            self._write_pointer()
        else:
            self._write_index()

    def _write_pointer(self) -> None:
        if self._stamp is not None:
            write_pointer(pointer_path(self._base, self.split, self._exclude), split=self.split,
                          exclude=self._exclude, folder=self.dir.name, stamp=self._stamp,
                          presence=self.presence)

    def __len__(self) -> int:
        return len(self.names)

    def _meta_path(self, component: Component) -> Path:
        return self.dir / f"{component.name}.json"

    def is_complete(self, component: Component) -> bool:
        path = self._meta_path(component)
        if not path.is_file():
            return False
        try:
            return json.loads(path.read_text()).get("version") == CACHE_VERSION
        except (OSError, json.JSONDecodeError):
            return False

    def ensure(self, components: list[Component], reader: PatchReader, *,
               workers: int | None = None, skip_unreadable: bool = False,
               progress: bool = False, shard: tuple[int, int] | None = None) -> bool:
        """Convert the components that are not complete yet (one pass over the patches), going on
        from the chunks earlier runs recorded. ``progress``: a bar on a terminal, plain lines on
        stderr otherwise. ``shard=(K, N)`` converts only part K of N and finalises only if every
        chunk is then recorded. Returns whether every component is complete."""
        missing = [c for c in components if not self.is_complete(c)]
        if not missing:
            return True
        if shard is not None:
            parse_shard(f"{shard[0]}/{shard[1]}")
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.dir / ".lock"))
        started = time.time()
        if shard is None:  # one converter at a time; the others wait and find the cache complete
            with lock:
                missing = [c for c in missing if not self.is_complete(c)]  # another process may have won
                if missing:
                    targets = self._prepare(missing)
                    self._convert(missing, targets, reader, workers, skip_unreadable, progress, None)
                    self._finalise(missing, reader, started)
            return True
        with lock:  # shards lock only around creating and finalising: they convert side by side
            missing = [c for c in missing if not self.is_complete(c)]
            if not missing:
                return True
            targets = self._prepare(missing)
        self._convert(missing, targets, reader, workers, skip_unreadable, progress, shard)
        with lock:
            missing = [c for c in missing if not self.is_complete(c)]
            if missing and self.converted(missing) < len(self.refs):
                return False  # another shard is still converting; the last one finalises
            if missing:
                self._finalise(missing, reader, started)
        return True

    def converted(self, components: list[Component]) -> int:
        """Patches whose chunk every one of ``components`` has recorded (or all, if complete)."""
        chunks = self._chunks()
        done = set(chunks)
        for component in components:
            if not self.is_complete(component):
                done &= set(self._records(component))
        return sum(chunks[start] for start in done)

    def _chunks(self) -> dict[int, int]:
        """First row -> row count of every chunk, in row order."""
        count = len(self.refs)
        return {start: min(CHUNK, count - start) for start in range(0, count, CHUNK)}

    def _partial_path(self, component: Component) -> Path:
        return self.dir / f"{component.name}.partial.npy"

    def _journals(self, component: Component) -> list[Path]:
        return sorted(self.dir.glob(f"{component.name}.chunks*.jsonl"))

    def _journal_path(self, component: Component, shard: tuple[int, int] | None) -> Path:
        tag = "" if shard is None else f"-{shard[0]}-of-{shard[1]}"
        return self.dir / f"{component.name}.chunks{tag}.jsonl"

    def _records(self, component: Component) -> dict[int, dict]:
        return _read_journals(self._journals(component), self._chunks())

    def _reusable_offset(self, component: Component) -> int | None:
        """The data offset of a partial file an earlier run left, if its header fits this split."""
        path = self._partial_path(component)
        try:
            array = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as error:  # truncated or not an .npy
            log.warning("Converting %s anew: its partial file %s is unreadable (%s).", component.name, path, error)
            return None
        expected = (len(self.refs), *component.row_shape)
        if array.dtype != np.dtype(component.dtype) or array.shape != expected or not array.flags.c_contiguous:
            log.warning("Converting %s anew: its partial file %s holds %s %s, not %s %s.", component.name,
                        path, array.dtype, array.shape, component.dtype, expected)
            return None
        return int(array.offset)

    def _prepare(self, components: list[Component]) -> dict[str, _Target]:
        """Reopen each partial file that fits, else create it (its journals go first: their rows
        are gone), after checking the disk holds the rows still to write."""
        offsets = {c.name: self._reusable_offset(c) for c in components}
        count = len(self.refs)
        chunks = self._chunks()
        rows_left = {c.name: count if offsets[c.name] is None
                     else count - sum(chunks[start] for start in self._records(c)) for c in components}
        self._check_space(components, rows_left)
        for component in components:
            if offsets[component.name] is None:
                for journal in self._journals(component):
                    journal.unlink()
                partial = np.lib.format.open_memmap(self._partial_path(component), mode="w+",
                                                    dtype=component.dtype, shape=(count, *component.row_shape))
                partial.flush()
                offsets[component.name] = int(partial.offset)
                del partial
        return {c.name: _Target(str(self._partial_path(c)), offsets[c.name], c.dtype, c.row_shape)
                for c in components}

    def _check_space(self, components: list[Component], rows_left: dict[str, int]) -> None:
        need = sum(c.row_bytes * rows_left[c.name] for c in components)
        free = shutil.disk_usage(self.dir).free
        if need > free:
            raise DataError(
                f"Caching the {self.split!r} split needs {need / 1e9:.1f} GB in {self.dir}, but only "
                f"{free / 1e9:.1f} GB are free. Free space or pass another --cache-dir."
            )

    def _plan(self, components: list[Component], targets: dict[str, _Target], reader: PatchReader,
              skip_unreadable: bool, shard: tuple[int, int] | None) -> tuple[list[_Job], int, int]:
        """This run's jobs (its chunks that a component lacks), and the patches of its chunks
        already done and in all."""
        records = {c.name: set(self._records(c)) for c in components}
        jobs, done, total = [], 0, 0
        for index, (start, rows) in enumerate(self._chunks().items()):
            if shard is not None and index % shard[1] != shard[0] - 1:
                continue
            total += rows
            lacking = {c.name: targets[c.name] for c in components if start not in records[c.name]}
            if lacking:
                jobs.append(_Job(reader, self.refs[start:start + rows], start, lacking, skip_unreadable))
            else:
                done += rows
        return jobs, done, total

    def _convert(self, components: list[Component], targets: dict[str, _Target], reader: PatchReader,
                 workers: int | None, skip_unreadable: bool, progress: bool,
                 shard: tuple[int, int] | None) -> None:
        """Convert this run's unrecorded chunks, recording each as it completes."""
        jobs, done, total = self._plan(components, targets, reader, skip_unreadable, shard)
        label = f"caching {self.split}" + ("" if shard is None else f" (shard {shard[0]}/{shard[1]})")
        by_name = {c.name: c for c in components}
        journals = {}
        try:
            with _progress(progress, label, done, total) as advance:
                for job, result in self._run(jobs, workers):
                    for name in job.targets:  # its rows are fsynced: now the record
                        if name not in journals:
                            journals[name] = open(self._journal_path(by_name[name], shard), "a")
                        journals[name].write(_record(result, name))
                        journals[name].flush()
                        os.fsync(journals[name].fileno())
                    advance(len(job.refs))
        finally:
            for journal in journals.values():
                journal.close()

    def _finalise(self, components: list[Component], reader: PatchReader, started: float) -> None:
        """Valid masks, statistics and skipped patches from the journals (chunk order), then the
        index, the renames and the JSON, last."""
        count = len(self.refs)
        chunks = self._chunks()
        results = {}
        for component in components:
            records = self._records(component)
            if len(records) != len(chunks):
                raise DataError(
                    f"Every chunk of {component.name} must be recorded before it is finalised, but "
                    f"{len(chunks) - len(records)} of {len(chunks)} are not (in {self.dir}); run "
                    "`mmvit-study data cache` again to convert them."
                )
            valid = np.ones(count, dtype=bool)
            skipped: list[tuple[str, str]] = []
            total = None
            for start in chunks:
                record = records[start]
                valid[start + np.asarray(record["invalid"], dtype=np.int64)] = False
                skipped.extend((name, error) for name, error in record["skipped"])
                if record["stats"] is not None:
                    accumulator = _accumulator(record["stats"])
                    total = accumulator if total is None else total.merge(accumulator)
            results[component.name] = valid, skipped, total
        names = dict.fromkeys(name for _, skipped, _ in results.values() for name, _ in skipped)
        if names:
            log.warning("Skipped %d unreadable patch(es) of the %s split: %s", len(names),
                        self.split, ", ".join(names))
        self._write_index()
        for component in components:
            valid, skipped, accumulator = results[component.name]
            final = self.dir / f"{component.name}.npy"
            os.replace(self._partial_path(component), final)
            np.save(self.dir / f"{component.name}.valid.npy", valid)
            meta = {
                "version": CACHE_VERSION,
                "component": component.name,
                "archive": str(self.archive.root),
                "layout": self.archive.layout,
                "split": self.split,
                "patches": count,
                "valid": int(valid.sum()),
                "skipped": [{"patch": name, "error": error} for name, error in skipped],
                "dtype": component.dtype,
                "shape": [count, *component.row_shape],
                "reader": {"resampling": reader.resampling, "speckle_filter": reader.speckle_filter},
                "stats": accumulator.result().to_dict() if accumulator is not None else None,
                "seconds": round(time.time() - started, 2),
            }
            tmp = self._meta_path(component).with_suffix(".json.partial")
            tmp.write_text(json.dumps(meta, indent=1))
            os.replace(tmp, self._meta_path(component))
            for journal in self._journals(component):
                journal.unlink(missing_ok=True)

    def _write_index(self) -> None:
        """The names, row by row, then the split's pointer to this folder (after a listing)."""
        write_index(self.dir / "index.json", self.names)
        self._write_pointer()

    def _run(self, jobs: list[_Job], workers: int | None) -> Iterator[tuple[_Job, _ChunkResult]]:
        """Each job with its result, as the chunks complete (their order does not matter: the
        journal keys them by row)."""
        workers = workers if workers is not None else min(len(jobs), os.cpu_count() or 1)
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield job, _convert_chunk(job)
            return
        # spawn: forking a process that already runs torch or Ray threads can deadlock.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_convert_chunk, job): job for job in jobs}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            finally:  # on an error, don't wait for the chunks not started
                for future in futures:
                    future.cancel()

    def load(self, component: Component) -> LoadedComponent:
        """Memory-map a complete component (read-only)."""
        if not self.is_complete(component):
            raise DataError(f"The cache component {component.name} in {self.dir} is not complete; "
                            "build it with `mmvit-study data cache`.")
        meta = json.loads(self._meta_path(component).read_text())
        array = np.load(self.dir / f"{component.name}.npy", mmap_mode="r")
        valid = np.load(self.dir / f"{component.name}.valid.npy")
        if array.shape[0] != len(self):
            raise DataError(f"The cache file {self.dir / component.name}.npy has {array.shape[0]} "
                            f"rows for {len(self)} patches; delete {self.dir} and rebuild it.")
        return LoadedComponent(array, valid, meta)


def cache_shard(root: Path, split: str, shard: tuple[int, int], *, modalities: str = "s2+s1",
                resampling: str = "bilinear", speckle_filter: str = "none", s1_dtype: str = "float32",
                cache_dir: Path | None = None, workers: int | None = None, skip_unreadable: bool = False,
                require_complete: bool = False, progress: bool = False) -> str:
    """Convert part K of N of a split for ``data cache --shard`` (the split may not be complete
    after it, so no dataset is opened) and return the line the CLI prints."""
    from mmvit.data.archive import open_archive
    from mmvit.data.splits import normalise_split

    components, reader = split_components(modalities, resampling, speckle_filter, s1_dtype)
    split = normalise_split(split)
    cache = SplitCache(open_archive(root, require_complete=require_complete), split, cache_dir)
    if not cache.ensure(components, reader, workers=workers, skip_unreadable=skip_unreadable,
                        progress=progress, shard=shard):
        return (f"{split}: shard {shard[0]}/{shard[1]} converted; {cache.converted(components):,} of "
                f"{len(cache):,} patches done so far — the last shard to finish (or a run without "
                "--shard) writes the cache")
    valid = np.logical_and.reduce([cache.load(c).valid for c in components])
    note = f", {int((~valid).sum())} skipped as unreadable" if not valid.all() else ""
    return f"{split}: {int(valid.sum()):,} patches cached{note} (all {shard[1]} shards done)"
