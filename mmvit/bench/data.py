"""Data-path throughput: GeoTIFFs read directly vs. the memory-mapped cache.

(a) reads the GeoTIFFs of each sample directly — in one process, and through a DataLoader;
(b) reads the cache through a DataLoader with the same workers and batch size, without
augmentation and with every augmentation the thesis uses (desynchronised dihedral flips and
random resized crops, modality drop). The cache conversion itself is timed too.
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
    direct_single: float
    direct_loader: float
    cached_plain: float
    cached_augmented: float
    conversion: float
    workers: int
    batch_size: int

    def summary(self) -> str:
        loader = f"DataLoader({self.workers} workers, batch {self.batch_size})"
        return "\n".join([
            f"(a) GeoTIFFs, direct, one process                 {self.direct_single:8.1f} patches/s",
            f"(a) GeoTIFFs, direct, {loader}  {self.direct_loader:8.1f} patches/s",
            f"(b) cache, no augmentation, {loader}  {self.cached_plain:8.1f} patches/s",
            f"(b) cache + all augmentations, {loader}  {self.cached_augmented:8.1f} patches/s",
            f"    cache conversion ({self.workers} processes)               {self.conversion:8.1f} patches/s",
            f"ratio (b, augmented) / (a, one process):      {self.cached_augmented / self.direct_single:5.1f}x",
            f"ratio (b, augmented) / (a, same DataLoader):  {self.cached_augmented / self.direct_loader:5.1f}x",
            f"ratio (b, no augmentation) / (a, same DataLoader): {self.cached_plain / self.direct_loader:5.1f}x",
        ])


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


def _loader(dataset, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0, drop_last=True)


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
    direct_rate = _rate(_loader(direct, batch_size, workers), max(1, count // batch_size))

    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        cached = BigEarthNetMM(root, "train", "s2+s1", cache_dir=cache_dir or Path(scratch), workers=workers)
        conversion = len(cached) / (time.perf_counter() - start)
        plain = _rate(_loader(cached, batch_size, workers), batches)
        stats = cached.stats()
        cached.transforms = build_transforms(
            train=True, s2_stats=stats["s2"], s1_stats=stats["s1"], flip=True, crop=True,
            synchronised=False, modality_drop=0.5,
        )
        augmented = _rate(_loader(cached, batch_size, workers), batches)
    return DataBenchmark(single, direct_rate, plain, augmented, conversion, workers, batch_size)
