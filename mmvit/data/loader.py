"""DataLoaders for one trial: cached splits, training-split statistics, thesis augmentations."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mmvit.config import TrialConfig
from mmvit.data.bands import input_channels
from mmvit.data.bigearthnet import BigEarthNetMM
from mmvit.data.cache import default_cache_dir
from mmvit.data.transforms import build_transforms


@dataclass
class TrialData:
    train: Dataset
    validation: Dataset
    test: Dataset
    in_chans: dict[str, int]
    archive: str
    class_counts: np.ndarray  # training-split patches per class (canonical order)


def available_cpus() -> int:
    """CPUs this process may use (Ray and cgroups restrict the affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def build_datasets(config: TrialConfig, *, progress: bool = False) -> TrialData:
    """The three splits of ``config.data``, cached once, normalised with training statistics."""
    data, augment = config.data, config.augment
    cache_dir = Path(data.cache_dir).expanduser() if data.cache_dir else default_cache_dir()
    common = dict(modalities=data.modalities, resampling=data.resampling,
                  speckle_filter=data.speckle_filter, cache_dir=cache_dir, s1_dtype=data.s1_dtype,
                  progress=progress)
    root = data.root
    if root is None:
        from mmvit.data.demo import ensure_demo_archive

        root = ensure_demo_archive()
    train = BigEarthNetMM(root, "train", **common)
    stats = train.stats()
    kwargs = dict(s2_stats=stats.get("s2"), s1_stats=stats.get("s1"),
                  s1_normalisation=data.s1_normalisation)
    train.transforms = build_transforms(
        train=True, flip=augment.flip, crop=augment.crop, crop_scale=augment.crop_scale,
        synchronised=augment.synchronised, modality_drop=augment.modality_drop, **kwargs)
    evaluation = build_transforms(train=False, **kwargs)
    validation = BigEarthNetMM(root, "validation", transforms=evaluation, **common)
    test = BigEarthNetMM(root, "test", transforms=evaluation, **common)
    labels = train.label_matrix()
    train_set: Dataset = train
    if data.max_train_patches is not None and data.max_train_patches < len(train):
        train_set = Subset(train, range(data.max_train_patches))
        labels = labels[: data.max_train_patches]
    return TrialData(train_set, validation, test, input_channels(data.modalities),
                     train.archive.describe(), labels.sum(axis=0).astype(np.int64))


def make_loader(dataset: Dataset, *, batch_size: int, workers: int, shuffle: bool,
                generator: torch.Generator | None = None, pin_memory: bool = False) -> DataLoader:
    """Training loaders are rebuilt each epoch (no persistent workers) so that worker RNGs are
    re-seeded from ``generator`` — a resumed run then sees exactly the same augmentations."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      generator=generator, pin_memory=pin_memory, drop_last=False,
                      persistent_workers=False)
