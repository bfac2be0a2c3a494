"""Trial start-up on a full-size archive. Usage: python benchmarks/trial_startup.py [--dir DIR] [--repeats N]

Builds what a trial of a full v1 study finds on disk, without a single image: an archive root
with the 590,326 S2 and 590,326 S1 patch folders under their official names (empty), and a
complete cache of the three official splits (train 269,695 / validation 123,723 / test 125,866)
whose arrays are sparse files of the real shape (78 GB of S2 for the training split, no disk).
Then, in a fresh process for each measurement, times ``build_datasets`` (the three cached
``BigEarthNetMM``) from after the imports, and the peak resident memory it adds (Linux
``VmHWM``, reset after the imports), twice:

* **listing** — as every trial did before: the archive is listed for each split (the cache
  record is ignored);
* **record** — the split caches' pointers and indexes give the patch lists
  (:mod:`mmvit.data.cache_index`).

``--baseline-src DIR`` adds a third row: the same child run with ``DIR`` first on ``sys.path``
(e.g. ``git archive HEAD mmvit | tar -x -C DIR``: the code before this change). The issue's
target: ready in ≤ 3 s, ≤ 200 MB for the name lists. Temporary folders are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmvit.data import splits as official  # noqa: E402
from mmvit.data.archive import V1_S1_DIR, V1_S2_DIR, open_archive  # noqa: E402
from mmvit.data.cache import CACHE_VERSION, SplitCache, labels_component, s1_component, s2_component  # noqa: E402
from mmvit.data.stamp import SETTLE_NS  # noqa: E402

CHILD = """
import json, os, sys, time
if sys.argv[3]:
    sys.path.insert(0, sys.argv[3])

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

import logging
logging.disable(logging.WARNING)
from mmvit.config import trial_config
from mmvit.data import cache as cache_module
from mmvit.data.loader import build_datasets
if sys.argv[4] == "listing" and hasattr(cache_module, "open_recorded"):
    cache_module.open_recorded = lambda *args, **kwargs: None
config = trial_config({"data": {"root": sys.argv[1], "cache_dir": sys.argv[2]}})
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
started = time.perf_counter()
data = build_datasets(config)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rss_after_imports": before, "peak": status("VmHWM"),
                  "patches": [len(data.train), len(data.validation), len(data.test)]}))
"""
S2_STATS = {"mean": [1000.0] * 10, "std": [500.0] * 10, "min": [0.0] * 10, "max": [10000.0] * 10}
S1_STATS = {"mean": [-15.0] * 2, "std": [4.0] * 2, "min": [-40.0] * 2, "max": [10.0] * 2}


def check_sparse(folder: Path) -> None:
    """Refuse to run where a 1 GiB hole would take disk space (the cache would need 180 GB)."""
    probe = folder / "sparse-probe"
    with open(probe, "wb") as f:
        f.truncate(2**30)
    used = probe.stat().st_blocks * 512
    probe.unlink()
    if used > 2**20:
        sys.exit(f"{folder} does not keep sparse files (a 1 GiB hole took {used / 2**20:.0f} MiB); "
                 "pass --dir on a filesystem that does (ext4, XFS, btrfs, tmpfs).")


def write_archive(root: Path) -> int:
    """The official S2 and S1 folder names, empty."""
    started = time.perf_counter()
    pairs = official.official_s2_to_s1()
    for base, names in ((root / V1_S2_DIR, pairs.keys()), (root / V1_S1_DIR, pairs.values())):
        base.mkdir(parents=True)
        for name in names:
            os.mkdir(base / name)
    print(f"archive: {len(pairs):,} S2 + {len(pairs):,} S1 empty folders in {time.perf_counter() - started:.0f} s")
    return len(pairs)


def write_cache(root: Path, cache_dir: Path) -> None:
    """Each split's cache as a build leaves it: index and pointer, sparse arrays, component JSONs."""
    archive = open_archive(root)
    for split in official.SPLITS:
        started = time.perf_counter()
        cache = SplitCache(archive, split, cache_dir)
        cache.dir.mkdir(parents=True, exist_ok=True)
        count = len(cache)
        for component, stats in ((labels_component(), None), (s2_component("bilinear"), S2_STATS),
                                 (s1_component("none", "float32"), S1_STATS)):
            np.lib.format.open_memmap(cache.dir / f"{component.name}.npy", mode="w+", dtype=component.dtype,
                                      shape=(count, *component.row_shape)).flush()
            np.save(cache.dir / f"{component.name}.valid.npy", np.ones(count, dtype=bool))
            meta = {"version": CACHE_VERSION, "component": component.name, "archive": str(root), "layout": "v1",
                    "split": split, "patches": count, "valid": count, "skipped": [], "dtype": component.dtype,
                    "shape": [count, *component.row_shape], "stats": stats}
            (cache.dir / f"{component.name}.json").write_text(json.dumps(meta))
        cache._write_index()  # the index, then the pointer, as a finished build writes them
        print(f"cache: {split} {count:,} patches in {time.perf_counter() - started:.0f} s")


def measure(mode: str, root: Path, cache_dir: Path, repeats: int, source: str = "") -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(cache_dir), source, mode],
                             check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    seconds = [r["seconds"] for r in runs]
    added = [(r["peak"] - r["rss_after_imports"]) / 2**20 for r in runs]
    print(f"{mode:>8}: ready in {statistics.median(seconds):6.2f} s (runs: "
          f"{', '.join(f'{s:.2f}' for s in seconds)}), peak RSS +{statistics.median(added):5.0f} MiB over "
          f"{runs[0]['rss_after_imports'] / 2**20:.0f} MiB after the imports; patches {runs[0]['patches']}")
    return {"seconds": statistics.median(seconds), "added": statistics.median(added)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None,
                        help="parent of the temporary folders (sparse files needed; default /dev/shm if writable, "
                             "else the system's temporary folder)")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per row (the median is shown)")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="a folder holding another version's mmvit package, measured as a third row")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args()
    print(f"CPUs available: {len(os.sched_getaffinity(0))}")
    # tmpfs when there is one: 1.18 million mkdirs ran at 700/s on a shared virtual disk (30 min), and
    # a listing of an archive in the page cache costs the same either way. About 1 GB of memory.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    tmp = Path(tempfile.mkdtemp(prefix="mmvit-startup-", dir=args.dir or shm))
    try:
        check_sparse(tmp)
        root, cache_dir = tmp / "archive", tmp / "cache"
        write_archive(root)
        time.sleep(SETTLE_NS / 1e9)  # a just-changed archive is not recorded (mmvit.data.stamp)
        write_cache(root, cache_dir)
        used = sum(f.stat().st_blocks * 512 for f in cache_dir.rglob("*") if f.is_file())
        print(f"cache on disk: {used / 1e6:.0f} MB (sparse)")
        rows = {"listing": measure("listing", root, cache_dir, args.repeats),
                "record": measure("record", root, cache_dir, args.repeats)}
        if args.baseline_src is not None:
            rows["baseline"] = measure("baseline", root, cache_dir, args.repeats, str(args.baseline_src.resolve()))
        old, new = rows["listing"], rows["record"]
        print(f"record vs listing: {old['seconds'] / new['seconds']:.1f}x faster, "
              f"{old['added'] / max(new['added'], 1):.1f}x less added memory "
              f"(target: ready in <= 3 s: {'met' if new['seconds'] <= 3 else 'MISSED'}; "
              f"<= 200 MB: {'met' if new['added'] * 2**20 <= 200e6 else 'MISSED'})")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            started = time.perf_counter()
            shutil.rmtree(tmp)
            print(f"removed {tmp} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
