"""Speckle filters for Sentinel-1 images (thesis §6.2, Table 7.11), applied once at cache time.

``none``, ``median<k>`` and ``lee<k>`` with odd k in 3..15 (``median3``, ``median5``, ``lee5``).
Every filter works on each channel (VV, VH) on its own, with mirrored borders (scipy
``mode="reflect"``).

* **median** runs on the dB values. 10·log10 is monotone, so the median of dB values is the dB
  of the median of linear powers: running in dB is exact, not an approximation.
* **Lee** (Lee 1980, "Digital image enhancement and noise filtering by use of local
  statistics"; Lee 1981) needs the multiplicative noise model, so it runs in **linear power**:
  with local mean m and variance v over a k×k window, Cᵢ² = v/m², noise Cᵤ² = 1/ENL (ENL 4.4
  for Sentinel-1 IW GRDH), weight W = clip(1 − Cᵤ²/Cᵢ², 0, 1) = clip(1 − Cᵤ²·m²/v, 0, 1) and
  output m + W·(x − m), converted back to dB. Homogeneous areas (Cᵢ ≈ Cᵤ) become their local
  mean; edges and point targets (Cᵢ ≫ Cᵤ) keep their values.

Numerics of the Lee filter, so that any finite input gives a finite output:

* powers are taken relative to each channel's brightest pixel, so they never overflow and the
  filter commutes exactly with a dB offset (a −60 dB scene is filtered like a 0 dB one);
* window sums are direct box correlations, not ``uniform_filter``'s running sums, whose
  rounding error (relative to the brightest value seen along a line) can swamp v = E[x²] − m²
  in dark areas that share a row with a bright target;
* v = 0 (a constant window) gives W = 0, the local mean; a result that underflows to 0 power is
  clamped to the smallest positive float64 (about −3077 dB below the channel's maximum).

No maintained Python library ships a Lee filter (scipy and scikit-image do not; vigra's is a C++
library, ``findpeaks`` a peak-detection package), hence the few lines below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from mmvit.errors import DataError
from mmvit.speckle_names import SIZES, parse_speckle_name, speckle_name, speckle_rule

S1_IW_GRDH_ENL = 4.4
"""Equivalent number of looks of Sentinel-1 IW GRDH products (ESA product specification)."""

_TINY = np.finfo(np.float64).tiny


@dataclass(frozen=True)
class SpeckleFilter:
    """A speckle filter; ``str()`` gives the canonical name used in cache keys and configs."""

    kind: Literal["none", "median", "lee"]
    size: int = 0
    enl: float = S1_IW_GRDH_ENL

    def __post_init__(self) -> None:
        if not (self.size == 0 if self.kind == "none" else
                self.kind in ("median", "lee") and self.size in SIZES):
            raise DataError(speckle_rule(f"{self.kind}{self.size or ''}"))
        if not self.enl > 0:
            raise DataError(f"the Lee filter's equivalent number of looks must be > 0, but got {self.enl}.")

    def __str__(self) -> str:
        return speckle_name(self.kind, self.size)

    def apply(self, s1_db: np.ndarray) -> np.ndarray:
        """Filter each channel of a (C, H, W) dB image; returns a new float32 array."""
        image = np.asarray(s1_db, dtype=np.float32)
        if self.kind == "none":
            return image.copy()
        if self.kind == "median":
            return ndimage.median_filter(image, size=(1, self.size, self.size), mode="reflect")
        return _lee(image, self.size, self.enl)


def _box_mean(values: np.ndarray, size: int) -> np.ndarray:
    """k×k window mean per channel from direct sums (exact to rounding in each window)."""
    kernel = np.full(size, 1.0 / size)
    rows = ndimage.correlate1d(values, kernel, axis=-2, mode="reflect")
    return ndimage.correlate1d(rows, kernel, axis=-1, mode="reflect")


def _lee(image_db: np.ndarray, size: int, enl: float) -> np.ndarray:
    reference = image_db.max(axis=(-2, -1), keepdims=True).astype(np.float64)
    power = np.power(10.0, (image_db - reference) / 10.0)
    mean = _box_mean(power, size)
    variance = np.maximum(_box_mean(power * power, size) - mean * mean, 0.0)
    excess = variance - mean * mean / enl  # v − Cᵤ²·m²: signal variance beyond speckle
    weight = np.divide(excess, variance, out=np.zeros_like(variance), where=variance > 0)
    filtered = mean + np.clip(weight, 0.0, 1.0) * (power - mean)
    return (10.0 * np.log10(np.maximum(filtered, _TINY)) + reference).astype(np.float32)


def parse_speckle_filter(text: str) -> SpeckleFilter:
    """``"median5"`` → SpeckleFilter("median", 5); a clear error for anything else."""
    kind, size = parse_speckle_name(text)
    return SpeckleFilter(kind, size)  # type: ignore[arg-type]
