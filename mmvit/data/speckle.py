"""Speckle filters for Sentinel-1 images (thesis §6.2, Table 7.11), applied once at cache time.

``none``, ``median<k>`` and ``lee<k>`` with odd k in 3..15 (``median3``, ``median5``, ``lee5``).

* **median** runs on the dB values. 10·log10 is monotone, so the median of dB values is the dB
  of the median of linear powers: running in dB is exact, not an approximation.
* **Lee** (Lee 1980, "Digital image enhancement and noise filtering by use of local statistics")
  needs the multiplicative noise model, so it runs in **linear power**: with local mean m and
  variance v over a k×k window, Cᵢ² = v/m², noise Cᵤ² = 1/ENL (ENL 4.4 for Sentinel-1 IW GRDH),
  weight W = clip(1 − Cᵤ²/Cᵢ², 0, 1) and output m + W·(x − m), converted back to dB.
  Homogeneous areas (Cᵢ ≈ Cᵤ) become their local mean; edges and point targets (Cᵢ ≫ Cᵤ) keep
  their values.
Neither scipy nor scikit-image ships a Lee filter, hence the few lines below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from mmvit.errors import DataError

S1_IW_GRDH_ENL = 4.4
_PATTERN = re.compile(r"^(none|median(\d+)|lee(\d+))$")
_EPS = 1e-12


@dataclass(frozen=True)
class SpeckleFilter:
    kind: Literal["none", "median", "lee"]
    size: int = 0
    enl: float = S1_IW_GRDH_ENL

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}{self.size}"

    def apply(self, s1_db: np.ndarray) -> np.ndarray:
        """Filter each channel of a (C, H, W) dB image; returns a new float32 array."""
        image = np.asarray(s1_db, dtype=np.float32)
        if self.kind == "none":
            return image.copy()
        window = (1, self.size, self.size)  # per channel, never across VV and VH
        if self.kind == "median":
            return ndimage.median_filter(image, size=window, mode="reflect")
        power = np.power(10.0, image.astype(np.float64) / 10.0)
        mean = ndimage.uniform_filter(power, size=window, mode="reflect")
        variance = np.maximum(ndimage.uniform_filter(power**2, size=window, mode="reflect") - mean**2, 0.0)
        ci2 = variance / np.maximum(mean**2, _EPS)
        weight = np.clip(1.0 - (1.0 / self.enl) / np.maximum(ci2, _EPS), 0.0, 1.0)
        filtered = mean + weight * (power - mean)
        return (10.0 * np.log10(np.maximum(filtered, _EPS))).astype(np.float32)


def parse_speckle_filter(text: str) -> SpeckleFilter:
    """``"median5"`` → SpeckleFilter("median", 5); a clear error for anything else."""
    match = _PATTERN.match(str(text).strip())
    size = int(match.group(2) or match.group(3)) if match and match.group(1) != "none" else 0
    if not match or (match.group(1) != "none" and not (3 <= size <= 15 and size % 2 == 1)):
        raise DataError(
            "speckle filter must be 'none', 'median<k>' or 'lee<k>' with odd k in 3..15 "
            f"(e.g. median3, median5, lee5), but got {text!r}."
        )
    kind = "none" if match.group(1) == "none" else ("median" if match.group(2) else "lee")
    return SpeckleFilter(kind, size)
