"""Normalisation and the thesis's augmentations (§6.2) on samples ``{"image_s2", "image_s1", …}``.

A transform takes a sample dict and returns a new one (torchgeo style): image keys present are
transformed, every other key (``label``, ``patch``) is passed on untouched, and input tensors
are never modified in place (a dataset may hand out views of its cache).

Augmentations only rearrange or remove values, never rescale them (the thesis keeps spectral
signatures intact): the 8 dihedral transforms, random resized crops, and random modality drop.
Flips and crops are applied **synchronised** (one draw for both images — S1 and S2 are
co-registered at 120 px) or **desynchronised** (one draw per image). Randomness comes only from
torch's global RNG, which DataLoader seeds per worker, so runs are reproducible.

Per-channel work is vectorised over channels; per sample the training pipeline allocates one
tensor per image and step at most. :class:`ChannelStats` lives in :mod:`mmvit.data.stats`
(numpy only, for cache workers) and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torchvision.transforms import RandomResizedCrop as _CropParams
from torchvision.transforms.v2 import functional as F

from mmvit.data.bands import PATCH_SIZE
from mmvit.data.stats import ChannelStats, ChannelStatsAccumulator
from mmvit.errors import DataError

__all__ = [
    "ChannelStats", "ChannelStatsAccumulator", "Compose", "Normalise", "RandomDihedral",
    "RandomModalityDrop", "RandomResizedCrop", "Sample", "build_transforms",
]

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]
IMAGE_KEYS = ("image_s2", "image_s1")
S1_MODES = ("standardise", "minmax", "none")


def _images(sample: Sample) -> list[str]:
    return [key for key in IMAGE_KEYS if key in sample]


def channel_affine(stats: ChannelStats | None, mode: str = "standardise") -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, 1/scale) per channel, 1-D: ``standardise`` (mean, std), ``minmax`` (min,
    max - min) or ``none`` (0, 1); a zero scale (a channel constant over the training split)
    counts as 1 instead of dividing by zero."""
    if mode not in S1_MODES:
        raise DataError(f"s1_normalisation must be one of {', '.join(S1_MODES)}, but got {mode!r}.")
    if stats is None or mode == "none":
        return torch.zeros(1), torch.ones(1)
    shift, scale = (stats.mean, stats.std) if mode == "standardise" else (stats.min, stats.max - stats.min)
    scale = np.asarray(scale, dtype=np.float64)
    return (torch.as_tensor(shift, dtype=torch.float32),
            torch.as_tensor(1.0 / np.where(scale > 0, scale, 1.0), dtype=torch.float32))


class Normalise:
    """S2 standardised per channel; S1 standardised, min-max scaled to [0, 1], or left in dB.

    Statistics are the training split's (see :mod:`mmvit.data.stats`); an image whose
    statistics are ``None`` passes unchanged.
    """

    def __init__(self, s2: ChannelStats | None, s1: ChannelStats | None,
                 s1_mode: Literal["standardise", "minmax", "none"] = "standardise") -> None:
        if s1_mode not in S1_MODES:
            raise DataError(f"s1_normalisation must be one of {', '.join(S1_MODES)}, but got {s1_mode!r}.")
        self.s1_mode = s1_mode
        self._affines: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key, stats, mode in (("image_s2", s2, "standardise"), ("image_s1", s1, s1_mode)):
            if stats is not None and mode != "none":  # columns (C, 1, 1), built once
                self._affines[key] = tuple(t.view(-1, 1, 1) for t in channel_affine(stats, mode))

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        for key, (shift, inverse_scale) in self._affines.items():
            if key not in sample:
                continue
            image = sample[key]
            if image.shape[0] != shift.shape[0]:
                raise DataError(
                    f"{key} has {image.shape[0]} channels but its normalisation statistics have "
                    f"{shift.shape[0]}; select the statistics of the channels in use (ChannelStats.select)."
                )
            out[key] = (image - shift).mul_(inverse_scale)  # one new tensor, scaled in place
        return out


_DIHEDRAL: tuple[tuple[bool, tuple[int, ...]], ...] = (
    (False, ()), (True, (-2,)), (False, (-2, -1)), (True, (-1,)),  # 0, 1, 2, 3 quarter turns
    (False, (-1,)), (True, (-2, -1)), (False, (-2,)), (True, ()),  # the same, then a left-right flip
)
"""Element i of the dihedral group as (transpose H and W, then flip these dims): i % 4
counter-clockwise quarter turns (``torch.rot90(x, i % 4, (-2, -1))``), then ``flip(-1)`` if
i ≥ 4. Written this way every element costs at most one copy (a transpose is a view)."""


def _dihedral(image: torch.Tensor, index: int) -> torch.Tensor:
    transpose, dims = _DIHEDRAL[index]
    image = image.transpose(-2, -1) if transpose else image
    return image.flip(dims) if dims else image


class RandomDihedral:
    """One of the 8 rotations/reflections of the square, uniformly."""

    def __init__(self, synchronised: bool = True) -> None:
        self.synchronised = synchronised

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        index = None
        for key in _images(sample):
            if index is None or not self.synchronised:
                index = int(torch.randint(8, ()))
            out[key] = _dihedral(sample[key], index)
        return out


class RandomResizedCrop:
    """A random box of ``scale`` × area and ``ratio`` aspect, resized back to ``size`` (bilinear,
    no antialiasing). Box sampling and resizing are torchvision's, which handle any channel count."""

    def __init__(self, scale: Sequence[float] = (0.5, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 synchronised: bool = True, size: int = PATCH_SIZE) -> None:
        self.scale, self.ratio = list(scale), list(ratio)
        self.synchronised, self.size = synchronised, size

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        box = None
        for key in _images(sample):
            if box is None or not self.synchronised:
                box = _CropParams.get_params(sample[key], self.scale, self.ratio)
            out[key] = F.resized_crop(sample[key], *box, [self.size, self.size], antialias=False)
        return out


class RandomModalityDrop:
    """With probability ``p`` zero one whole modality, chosen uniformly (never both); a no-op for
    single-image samples. Runs after normalisation, so a dropped standardised image equals its
    training mean rather than an out-of-distribution value."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        keys = _images(sample)
        if len(keys) < 2 or float(torch.rand(())) >= self.p:
            return sample
        out = dict(sample)
        dropped = keys[int(torch.randint(len(keys), ()))]
        out[dropped] = torch.zeros_like(sample[dropped])
        return out


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for transform in self.transforms:
            sample = transform(sample)
        return sample


def build_transforms(*, train: bool, s2_stats: ChannelStats | None, s1_stats: ChannelStats | None,
                     s1_normalisation: Literal["standardise", "minmax", "none"] = "standardise",
                     flip: bool = True, crop: bool = True, crop_scale: Sequence[float] = (0.5, 1.0),
                     synchronised: bool = True, modality_drop: float = 0.0) -> Compose:
    """Evaluation: normalisation only. Training: normalisation, then the augmentations asked for
    (dihedral, crop, modality drop — in that order)."""
    steps: list[Transform] = [Normalise(s2_stats, s1_stats, s1_normalisation)]
    if train:
        if flip:
            steps.append(RandomDihedral(synchronised))
        if crop:
            steps.append(RandomResizedCrop(crop_scale, synchronised=synchronised))
        if modality_drop > 0:
            steps.append(RandomModalityDrop(modality_drop))
    return Compose(steps)
