"""Data-path throughput: GeoTIFFs read directly vs. the memory-mapped cache.

Both paths go through the same DataLoader (same workers, same batch size), so the ratio shows
what the cache buys; the cached path also runs every augmentation the thesis uses
(desynchronised flips and crops, modality drop), the direct path none.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mmvit.data.bigearthnet import BigEarthNetMM
from mmvit.data.transforms import build_transforms


@dataclass
class DataBenchmark:
    direct_per_s: float
    direct_single_per_s: float
    cached_per_s: float
    cache_build_per_s: float
    workers: int
    batch_size: int

    @property
    def ratio(self) -> float:
        return self.cached_per_s / self.direct_per_s

    def summary(self) -> str:
        return (
            f"(a) GeoTIFFs, direct, DataLoader({self.workers} workers): {self.direct_per_s:8.1f} patches/s\n"
            f"    GeoTIFFs, direct, one process:            {self.direct_single_per_s:8.1f} patches/s\n"
            f"(b) cache + all augmentations, DataLoader({self.workers} workers): {self.cached_per_s:8.1f} patches/s\n"
            f"    cache conversion:                          {self.cache_build_per_s:8.1f} patches/s\n"
            f"ratio (b)/(a): {self.ratio:.1f}x  (batch size {self.batch_size})"
        )


def _cycle(loader: DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


def _rate(loader: DataLoader, batches: int) -> float:
    """Samples per second over ``batches`` batches, after one warm-up batch (worker start-up)."""
    stream = _cycle(loader)
    next(stream)
    seen = 0
    start = time.perf_counter()
    for _ in range(batches):
        seen += len(next(stream)["patch"])
    return seen / (time.perf_counter() - start)


def run_data_benchmark(root: Path, *, direct_patches: int = 200, batches: int = 20,
                       batch_size: int = 64, workers: int = 2,
                       cache_dir: Path | None = None) -> DataBenchmark:
    torch.set_num_threads(1)
    direct = BigEarthNetMM(root, "train", "s2+s1")
    count = min(direct_patches, len(direct))
    start = time.perf_counter()
    for index in range(count):
        direct[index]
    single = count / (time.perf_counter() - start)
    direct_batches = max(1, count // batch_size)
    loader = DataLoader(direct, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    direct_rate = _rate(loader, direct_batches)

    with tempfile.TemporaryDirectory() as scratch:
        target = cache_dir or Path(scratch)
        start = time.perf_counter()
        cached = BigEarthNetMM(root, "train", "s2+s1", cache_dir=target, workers=workers)
        build = len(cached) / (time.perf_counter() - start)
        stats = cached.stats()
        cached.transforms = build_transforms(
            train=True, s2_stats=stats["s2"], s1_stats=stats["s1"], flip=True, crop=True,
            synchronised=False, modality_drop=0.5,
        )
        loader = DataLoader(cached, batch_size=batch_size, shuffle=True, num_workers=workers,
                            persistent_workers=workers > 0, drop_last=True)
        cached_rate = _rate(loader, batches)
    return DataBenchmark(direct_rate, single, cached_rate, build, workers, batch_size)
