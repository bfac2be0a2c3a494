"""Normalisation and the thesis's augmentations (§6.2) on samples ``{"image_s2", "image_s1", …}``.

Augmentations only rearrange or remove values, never change them (the thesis keeps spectral
signatures intact): the 8 dihedral transforms, random resized crops, and random modality drop.
Flips and crops are applied **synchronised** (one draw for both images — S1 and S2 are
co-registered at 120 px) or **desynchronised** (one draw per image). Randomness comes from
torch's global RNG, which DataLoader seeds per worker, so runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torchvision.transforms import RandomResizedCrop as _CropParams
from torchvision.transforms.v2 import functional as F

from mmvit.data.bands import PATCH_SIZE
from mmvit.data.stats import ChannelStats
from mmvit.errors import DataError

Sample = dict
IMAGE_KEYS = ("image_s2", "image_s1")
S1_MODES = ("standardise", "minmax", "none")


def _images(sample: Sample) -> list[str]:
    return [key for key in IMAGE_KEYS if key in sample]


def _column(values, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype).reshape(-1, 1, 1)


class Normalise:
    """S2 standardised per channel; S1 standardised, min-max scaled to [0, 1], or left in dB.
    Statistics are the training split's (see :mod:`mmvit.data.stats`)."""

    def __init__(self, s2: ChannelStats | None, s1: ChannelStats | None,
                 s1_mode: Literal["standardise", "minmax", "none"] = "standardise") -> None:
        if s1_mode not in S1_MODES:
            raise DataError(f"s1_normalisation must be one of {', '.join(S1_MODES)}, but got {s1_mode!r}.")
        self.s2, self.s1, self.s1_mode = s2, s1, s1_mode

    def _shift_scale(self, key: str) -> tuple | None:
        if key == "image_s2":
            return (self.s2.mean, self.s2.std) if self.s2 is not None else None
        if self.s1 is None or self.s1_mode == "none":
            return None
        if self.s1_mode == "standardise":
            return self.s1.mean, self.s1.std
        return self.s1.min, self.s1.max - self.s1.min

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        for key in _images(sample):
            shift_scale = self._shift_scale(key)
            if shift_scale is None:
                continue
            image = sample[key]
            shift, scale = _column(shift_scale[0], image), _column(shift_scale[1], image)
            out[key] = (image - shift) / scale.clamp_min(1e-12)
        return out


def _dihedral(image: torch.Tensor, index: int) -> torch.Tensor:
    """Element ``index`` (0..7) of the dihedral group: ``index % 4`` quarter turns, then a flip."""
    image = torch.rot90(image, index % 4, dims=(-2, -1))
    return image.flip(-1) if index >= 4 else image


class RandomDihedral:
    """One of the 8 rotations/reflections of the square, uniformly."""

    def __init__(self, synchronised: bool = True) -> None:
        self.synchronised = synchronised

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        shared = int(torch.randint(8, ()))
        for key in _images(sample):
            index = shared if self.synchronised else int(torch.randint(8, ()))
            out[key] = _dihedral(sample[key], index)
        return out


class RandomResizedCrop:
    """A random box of ``scale`` × area and ``ratio`` aspect, resized back (bilinear)."""

    def __init__(self, scale: Sequence[float] = (0.5, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 synchronised: bool = True, size: int = PATCH_SIZE) -> None:
        self.scale, self.ratio = list(scale), list(ratio)
        self.synchronised, self.size = synchronised, size

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        keys = _images(sample)
        box = _CropParams.get_params(sample[keys[0]], self.scale, self.ratio) if keys else None
        for key in keys:
            if not self.synchronised:
                box = _CropParams.get_params(sample[key], self.scale, self.ratio)
            out[key] = F.resized_crop(sample[key], *box, [self.size, self.size], antialias=False)
        return out


class RandomModalityDrop:
    """With probability ``p`` zero one whole modality (never both). Runs after normalisation,
    so a dropped standardised image equals its training mean."""

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
    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for transform in self.transforms:
            sample = transform(sample)
        return sample


def build_transforms(*, train: bool, s2_stats: ChannelStats | None, s1_stats: ChannelStats | None,
                     s1_normalisation: str = "standardise", flip: bool = True, crop: bool = True,
                     crop_scale: Sequence[float] = (0.5, 1.0), synchronised: bool = True,
                     modality_drop: float = 0.0) -> Compose:
    """Evaluation: normalisation only. Training: normalisation, then the augmentations asked for."""
    steps: list[Callable[[Sample], Sample]] = [Normalise(s2_stats, s1_stats, s1_normalisation)]
    if train:
        if flip:
            steps.append(RandomDihedral(synchronised))
        if crop:
            steps.append(RandomResizedCrop(crop_scale, synchronised=synchronised))
        if modality_drop > 0:
            steps.append(RandomModalityDrop(modality_drop))
    return Compose(steps)
