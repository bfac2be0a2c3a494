"""Cache build throughput (`mmvit-study data cache`) on a demo archive, and what a resume saves.

Usage: python benchmarks/cache_build.py [--patches 1000] [--workers N] [--kill-at 0.6]

Builds the S2+S1 cache (labels, S2 bilinear uint16, S1 float32) of every split of a fresh demo
archive of ``--patches`` patches and prints patches/s overall and per worker, and the time the
three v1 splits (519,284 patches) would take on this machine at that rate. Then the resume
figure: the training split is built again in a fresh cache by `mmvit-study data cache` in its own
process group, killed (SIGKILL, as a SLURM time limit kills a job) once ``--kill-at`` of its
patches are recorded, and rerun; the rerun's seconds are set against the full build's. Writing
the demo archive is not timed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmvit.data.archive import open_archive  # noqa: E402
from mmvit.data.cache import SplitCache, split_components  # noqa: E402
from mmvit.data.demo import write_demo_archive  # noqa: E402

V1_SPLITS = {"train": 269_695, "validation": 123_723, "test": 125_866}
SPLITS = tuple(V1_SPLITS)


def build(root: Path, cache_dir: Path, split: str, workers: int) -> float:
    """Seconds to convert one split into an empty cache."""
    components, reader = split_components("s2+s1")
    split_cache = SplitCache(open_archive(root), split, cache_dir)
    started = time.perf_counter()
    split_cache.ensure(components, reader, workers=workers)
    return time.perf_counter() - started


def recorded(root: Path, cache_dir: Path) -> int:
    """Training patches every component has journalled (the cache's own count)."""
    split_cache = SplitCache(open_archive(root), "train", cache_dir)
    return split_cache.converted(split_components("s2+s1")[0]) if split_cache.dir.is_dir() else 0


def kill_partway(root: Path, cache_dir: Path, workers: int, fraction: float) -> int:
    """Start `data cache --split train`, SIGKILL its process group once ``fraction`` of the split
    is recorded, and return the patches recorded then."""
    total = len(open_archive(root).patches("train"))
    command = [sys.executable, "-m", "mmvit", "data", "cache", str(root), "--split", "train",
               "--cache-dir", str(cache_dir), "--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        while (done := recorded(root, cache_dir)) < fraction * total:
            if process.poll() is not None:
                raise SystemExit(f"the conversion ended (exit {process.returncode}) before the kill; "
                                 "ask for a larger --patches")
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return recorded(root, cache_dir)  # a chunk may have been recorded since the last look


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=1000, help="patches in the demo archive")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--kill-at", type=float, default=0.6, help="fraction of the training split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cache-build-") as work:
        work = Path(work)
        started = time.perf_counter()
        root = write_demo_archive(work / "archive", patches=args.patches, seed=args.seed)
        archive = open_archive(root)
        print(f"demo archive of {args.patches:,} patches written in {time.perf_counter() - started:.0f} s "
              f"(not timed); S2+S1 cache, {args.workers} worker(s), {os.cpu_count()} CPU cores")
        seconds = {split: build(root, work / "full", split, args.workers) for split in SPLITS}
        sizes = {split: len(archive.patches(split)) for split in SPLITS}
        for split in SPLITS:
            print(f"  {split:<11}{sizes[split]:>7,} patches {seconds[split]:7.1f} s "
                  f"{sizes[split] / seconds[split]:7.0f} patches/s")
        rate = sum(sizes.values()) / sum(seconds.values())
        print(f"  {'all':<11}{sum(sizes.values()):>7,} patches {sum(seconds.values()):7.1f} s "
              f"{rate:7.0f} patches/s ({rate / args.workers:.0f} per worker)")
        full = sum(V1_SPLITS.values())
        print(f"projected at {rate:.0f} patches/s: v1 train ({V1_SPLITS['train']:,}) "
              f"{duration(V1_SPLITS['train'] / rate)}, all three v1 splits ({full:,}) {duration(full / rate)}")
        done = kill_partway(root, work / "resumed", args.workers, args.kill_at)
        if done == sizes["train"]:
            print(f"resume: not measured, every chunk of the {done:,} training patches was recorded "
                  "before the kill; ask for a larger --patches")
            return
        rerun = build(root, work / "resumed", "train", args.workers)
        print(f"resume: train killed with {done:,} of {sizes['train']:,} patches recorded "
              f"({100 * done / sizes['train']:.0f} %); rerun {rerun:.1f} s against {seconds['train']:.1f} s "
              f"for the full build ({rerun / seconds['train']:.2f}×)")


if __name__ == "__main__":  # cache conversion spawns workers that re-import this module
    main()
