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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from filelock import FileLock

from mmvit.data.archive import Archive, PatchRef
from mmvit.data.bands import PATCH_SIZE, S1_BANDS, S2_BANDS
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


@dataclass(frozen=True)
class _Job:
    reader: PatchReader
    refs: list[PatchRef]
    start: int
    paths: dict[str, str]  # component name -> partial .npy path
    skip_unreadable: bool


@dataclass
class _ChunkResult:
    start: int
    valid: np.ndarray
    skipped: list[tuple[str, str]]
    stats: dict[str, ChannelStatsAccumulator]


def _array_key(component: str) -> str:
    """The PatchReader output a component stores: "label", "s2" or "s1"."""
    kind = component.split("-", 1)[0]
    return "label" if kind == "labels" else kind


def _convert_chunk(job: _Job) -> _ChunkResult:
    """Read a run of patches and write their rows into the partial memory maps."""
    outputs = {name: np.load(path, mmap_mode="r+") for name, path in job.paths.items()}
    valid = np.ones(len(job.refs), dtype=bool)
    skipped: list[tuple[str, str]] = []
    stats = {
        name: ChannelStatsAccumulator(out.shape[1])
        for name, out in outputs.items() if _array_key(name) != "label"
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
            value = arrays[_array_key(name)]
            out[job.start + offset] = value
            if name in stats:
                stats[name].update(value)
    for out in outputs.values():
        out.flush()
    return _ChunkResult(job.start, valid, skipped, stats)


class SplitCache:
    """The cache of one archive split; :meth:`ensure` converts what is missing."""

    def __init__(self, archive: Archive, split: str, cache_dir: Path | None = None,
                 *, exclude: bool = True) -> None:
        self.archive = archive
        self.split = split
        self.refs = archive.patches(split, exclude=exclude)
        if not self.refs:
            raise DataError(
                f"The {split!r} split of the {archive.describe()} holds no patches "
                f"({archive.presence(split, exclude=exclude).describe()}; split lists from "
                f"{archive.split_source}). Put the split's patches under the root, or check the "
                "split name and the lists."
            )
        digest = hashlib.sha256("\n".join(r.patch for r in self.refs).encode()).hexdigest()[:12]
        self.dir = Path(cache_dir or default_cache_dir()) / archive.identity() / f"{split}-{digest}"

    def __len__(self) -> int:
        return len(self.refs)

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
               progress: bool = False) -> None:
        """Convert the components that are not complete yet (one pass over the patches)."""
        missing = [c for c in components if not self.is_complete(c)]
        if not missing:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.dir / ".lock")):
            missing = [c for c in missing if not self.is_complete(c)]  # another process may have won
            if missing:
                self._convert(missing, reader, workers, skip_unreadable, progress)

    def _check_space(self, components: list[Component]) -> None:
        need = sum(c.row_bytes for c in components) * len(self.refs)
        free = shutil.disk_usage(self.dir).free
        if need > free:
            raise DataError(
                f"Caching the {self.split!r} split needs {need / 1e9:.1f} GB in {self.dir}, but only "
                f"{free / 1e9:.1f} GB are free. Free space or pass another --cache-dir."
            )

    def _convert(self, components: list[Component], reader: PatchReader, workers: int | None,
                 skip_unreadable: bool, progress: bool) -> None:
        self._check_space(components)
        started = time.time()
        count = len(self.refs)
        paths = {}
        for component in components:
            path = self.dir / f"{component.name}.partial.npy"
            np.lib.format.open_memmap(path, mode="w+", dtype=component.dtype,
                                      shape=(count, *component.row_shape)).flush()
            paths[component.name] = str(path)
        jobs = [
            _Job(reader, self.refs[start:start + CHUNK], start, paths, skip_unreadable)
            for start in range(0, count, CHUNK)
        ]
        valid = np.ones(count, dtype=bool)
        skipped: list[tuple[str, str]] = []
        totals = {c.name: None for c in components if c.has_stats}
        for result in self._run(jobs, workers, progress):
            valid[result.start:result.start + len(result.valid)] = result.valid
            skipped.extend(result.skipped)
            for name, accumulator in result.stats.items():
                totals[name] = accumulator if totals[name] is None else totals[name].merge(accumulator)
        if skipped:
            log.warning("Skipped %d unreadable patch(es) of the %s split: %s", len(skipped),
                        self.split, ", ".join(name for name, _ in skipped))
        self._write_index()
        for component in components:
            final = self.dir / f"{component.name}.npy"
            os.replace(paths[component.name], final)
            np.save(self.dir / f"{component.name}.valid.npy", valid)
            accumulator = totals.get(component.name)
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

    def _write_index(self) -> None:
        tmp = self.dir / "index.json.partial"
        tmp.write_text(json.dumps([[r.patch, r.s1_patch] for r in self.refs]))
        os.replace(tmp, self.dir / "index.json")

    def _run(self, jobs: list[_Job], workers: int | None, progress: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        workers = workers if workers is not None else min(len(jobs), os.cpu_count() or 1)
        columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                   "patches", TimeRemainingColumn())
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task(f"caching {self.split}", total=len(self.refs))
            if workers <= 1 or len(jobs) == 1:
                for job in jobs:
                    yield _convert_chunk(job)
                    bar.advance(task, len(job.refs))
                return
            # spawn: forking a process that already runs torch or Ray threads can deadlock.
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                for job, result in zip(jobs, pool.map(_convert_chunk, jobs)):
                    yield result
                    bar.advance(task, len(job.refs))

    def load(self, component: Component) -> LoadedComponent:
        """Memory-map a complete component (read-only)."""
        if not self.is_complete(component):
            raise DataError(f"The cache component {component.name} in {self.dir} is not complete; "
                            "build it with `mmvit-study data cache`.")
        meta = json.loads(self._meta_path(component).read_text())
        array = np.load(self.dir / f"{component.name}.npy", mmap_mode="r")
        valid = np.load(self.dir / f"{component.name}.valid.npy")
        if array.shape[0] != len(self.refs):
            raise DataError(f"The cache file {self.dir / component.name}.npy has {array.shape[0]} "
                            f"rows for {len(self.refs)} patches; delete {self.dir} and rebuild it.")
        return LoadedComponent(array, valid, meta)
