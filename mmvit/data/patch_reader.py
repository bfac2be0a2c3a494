"""Turn one :class:`~mmvit.data.archive.PatchRef` into arrays: the one read path shared by the
direct dataset and the cache conversion, so both yield identical values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmvit.data.archive import PatchRef, label_vector
from mmvit.data.bands import S2_BANDS
from mmvit.data.reader import check_resampling, read_s1, read_s2
from mmvit.data.speckle import SpeckleFilter, parse_speckle_filter


@dataclass(frozen=True)
class PatchReader:
    """Reads the optical bands, the SAR image (speckle-filtered) and the label vector.

    ``s2_bands`` empty skips the optical read, ``with_s1`` False the SAR read.
    """

    s2_bands: tuple[str, ...] = S2_BANDS
    resampling: str = "bilinear"
    with_s1: bool = True
    speckle_filter: str = "none"

    def __post_init__(self) -> None:
        check_resampling(self.resampling)
        object.__setattr__(self, "_filter", parse_speckle_filter(self.speckle_filter))

    @property
    def speckle(self) -> SpeckleFilter:
        return self._filter  # type: ignore[attr-defined]

    def __call__(self, ref: PatchRef) -> dict[str, np.ndarray]:
        arrays = {"label": label_vector(ref)}
        if self.s2_bands:
            arrays["s2"] = read_s2(ref.s2_dir, ref.patch, self.s2_bands, self.resampling)
        if self.with_s1:
            arrays["s1"] = self.speckle.apply(read_s1(ref.s1_dir, ref.s1_patch, ref.patch))
        return arrays
