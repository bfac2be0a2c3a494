"""Data-path throughput: the batch loader against what the memory allows, in one run.

On one cached training split (the archive's, or a synthetic one of ``--patches``):

* **gather limit**: random batches gathered from the memory map with one ``index_select`` per
  array into preallocated buffers and converted to float32: what any loader must at least do;
* **batch loader**: :class:`mmvit.data.loader.BatchLoader` on the CPU, normalisation only, and
  with every thesis augmentation (desynchronised dihedral flips and random resized crops,
  modality drop 0.5): model-ready batches;
* **per-sample DataLoader** (the loader before the batch path, for reference): the cached
  dataset with the same augmentations through ``torch.utils.data.DataLoader``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mmvit.data.batch_augment import AugmentOptions
from mmvit.data.bigearthnet import BigEarthNetMM
from mmvit.data.cache import default_cache_dir
from mmvit.data.loader import BatchLoader, SplitArrays, split_arrays
from mmvit.data.transforms import build_transforms, channel_affine

ALL_AUGMENTATIONS = AugmentOptions(flip=True, crop=True, synchronised=False, modality_drop=0.5)


@dataclass
class DataBenchmark:
    source: str
    batch_size: int
    threads: int
    gather_limit: float
    batch_plain: float
    batch_augmented: float
    per_sample: float | None
    workers: int

    def summary(self) -> str:
        lines = [
            f"{self.source}; batch {self.batch_size}, {self.threads} CPU thread(s)",
            f"  gather limit (index_select from the memory map → float32)  {self.gather_limit:9.0f} patches/s",
            f"  batch loader, normalisation only                            {self.batch_plain:9.0f} patches/s",
            f"  batch loader, every augmentation                            {self.batch_augmented:9.0f} patches/s",
        ]
        if self.per_sample is not None:
            lines.append(f"  per-sample DataLoader ({self.workers} workers), every augmentation"
                         f"      {self.per_sample:9.0f} patches/s")
        lines.append(f"ratio batch loader (augmented) / gather limit:   {self.batch_augmented / self.gather_limit:5.2f}")
        if self.per_sample is not None:
            lines.append(f"ratio batch loader (augmented) / per-sample DataLoader: {self.batch_augmented / self.per_sample:5.1f}x")
        return "\n".join(lines)


def _rate(batches: Callable[[], Iterator], count: int) -> float:
    """Patches per second over ``count`` batches, after one warm-up batch."""
    stream = itertools.chain.from_iterable(batches() for _ in itertools.count())
    next(stream)
    seen = 0
    start = time.perf_counter()
    for _ in range(count):
        seen += len(next(stream)["label"])
    return seen / (time.perf_counter() - start)


def _gather_limit(split: SplitArrays, batch_size: int, count: int) -> float:
    generator = torch.Generator().manual_seed(0)
    raw = {key: torch.empty((batch_size, *a.shape[1:]), dtype=a.dtype) for key, a in split.images.items()}
    floats = {key: torch.empty(t.shape) for key, t in raw.items()}

    def batches() -> Iterator[dict]:
        for _ in range(len(split) // batch_size or 1):
            rows = split.rows[torch.randint(len(split), (batch_size,), generator=generator)].sort().values
            batch = split.gather(rows, raw)
            yield {"label": batch["label"], **{k: floats[k].copy_(batch[k]) for k in raw}}

    return _rate(batches, count)


def run_data_benchmark(root: Path, *, batches: int = 20, batch_size: int = 256, per_sample: bool = True,
                       workers: int = 2, cache_dir: Path | None = None) -> DataBenchmark:
    dataset = BigEarthNetMM(root, "train", "s2+s1", cache_dir=cache_dir or default_cache_dir())
    stats = dataset.stats()
    split = split_arrays(dataset)
    normalisation = {"s2": channel_affine(stats["s2"]), "s1": channel_affine(stats["s1"])}
    cpu = torch.device("cpu")
    seeds = itertools.count()
    plain = BatchLoader(split, batch_size=batch_size, device=cpu, normalisation=normalisation, shuffle=True)
    augmented = BatchLoader(split, batch_size=batch_size, device=cpu, normalisation=normalisation,
                            augment=ALL_AUGMENTATIONS, shuffle=True)
    limit = _gather_limit(split, batch_size, batches)
    plain_rate = _rate(lambda: plain.batches(next(seeds)), batches)
    augmented_rate = _rate(lambda: augmented.batches(next(seeds)), batches)
    before = None
    if per_sample:
        dataset.transforms = build_transforms(
            train=True, s2_stats=stats["s2"], s1_stats=stats["s1"], flip=True, crop=True,
            synchronised=False, modality_drop=0.5)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                            persistent_workers=workers > 0)
        before = _rate(lambda: iter(loader), max(2, batches // 4))
    source = f"{dataset.archive.describe()}, train split ({len(split):,} patches, cached)"
    return DataBenchmark(source, batch_size, torch.get_num_threads(), limit, plain_rate, augmented_rate,
                         before, workers)
