"""The BigEarthNet-MM dataset (Sentinel-2 + Sentinel-1), read directly or from the cache."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mmvit.data.archive import Archive, label_vector, open_archive
from mmvit.data.bands import MODALITIES, S2_BANDS, optical_bands, uses_s1
from mmvit.data.cache import LoadedComponent, SplitCache, array_key, split_components
from mmvit.data.cache_index import PatchNames
from mmvit.data.splits import normalise_split
from mmvit.data.stats import ChannelStats
from mmvit.errors import DataError

log = logging.getLogger(__name__)
Sample = dict[str, "torch.Tensor | str"]


class BigEarthNetMM(Dataset):
    """BigEarthNet-MM: co-registered Sentinel-2 and Sentinel-1 patches, 19-class multi-label.

    Dataset features:

    * 590,326 pairs of 1.2 km × 1.2 km patches over ten European countries, 2017–2018
    * Sentinel-2 L2A, uint16 reflectance; the ten 10 m and 20 m bands in the fixed order
      B02 B03 B04 B05 B06 B07 B08 B8A B11 B12, the 20 m bands resampled to 120×120
      (bilinear by default); B01 and B09 (60 m) are dropped, as in the thesis
    * Sentinel-1 GRD IW, VV and VH backscatter as float32 dB at 120×120, never rounded
    * 19-class nomenclature (converted from the 43 CORINE classes for v1) in canonical order
    * official splits: train 269,695 / validation 123,723 / test 125,866 (v1) with snow,
      cloud/shadow and no-19-label patches excluded

    Modalities: ``s2``, ``s1``, ``rgb`` (B04 B03 B02 as ``image_s2``), ``s2+s1``, ``rgb+s1``.
    A sample is ``{"image_s2": (C,120,120), "image_s1": (2,120,120), "label": (19,),
    "patch": S2 name}`` (float32 tensors; raw values when ``transforms`` is None).

    A partial archive (part of the patches on disk) holds the pairs present: ``len()`` counts
    them, an index returns the patch asked for, and one warning per split says how many of the
    official patches are there (``presence``); ``require_complete=True`` makes it an error.

    With ``cache_dir`` the split is converted once into memory-mapped arrays
    (:mod:`mmvit.data.cache`) and read from there — identical values, far faster. Once a split
    is cached, later datasets take its patch list and presence from the cache's index instead of
    listing the archive, for as long as the archive's folders and lists are unchanged
    (:mod:`mmvit.data.cache_index`); ``refs`` then builds each :class:`PatchRef` on demand.

    If you use this dataset, cite Sumbul et al., "BigEarthNet-MM: A Large-Scale, Multimodal,
    Multilabel Benchmark Archive for Remote Sensing Image Classification and Retrieval",
    IEEE GRSM 2021, https://doi.org/10.1109/MGRS.2021.3089174.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: str = "train",
        modalities: str = "s2+s1",
        transforms: Callable[[Sample], Sample] | None = None,
        *,
        resampling: str = "bilinear",
        speckle_filter: str = "none",
        cache_dir: str | os.PathLike[str] | None = None,
        s1_dtype: str = "float32",
        skip_unreadable: bool = False,
        exclude: bool = True,
        require_complete: bool = False,
        workers: int | None = None,
        progress: bool = False,
    ) -> None:
        if modalities not in MODALITIES:
            raise DataError(
                f"modalities must be one of {', '.join(MODALITIES)}, but got {modalities!r}."
            )
        if root is None:
            from mmvit.data.demo import ensure_demo_archive

            root = ensure_demo_archive()
        self.archive: Archive = open_archive(root, require_complete=require_complete)
        self.split = normalise_split(split)
        self.modalities = modalities
        self.transforms = transforms
        self.skip_unreadable = skip_unreadable
        self.skipped: list[str] = []
        self._optical = optical_bands(modalities)
        self._with_s1 = uses_s1(modalities)
        # RGB is read as all ten bands by the cache (shared with s2 studies) and sliced here.
        self._channels = [S2_BANDS.index(b) for b in self._optical]
        components, self.reader = split_components(modalities, resampling, speckle_filter, s1_dtype)
        self._cache: dict[str, LoadedComponent] | None = None
        if cache_dir is not None:
            cache = SplitCache(self.archive, self.split, Path(cache_dir), exclude=exclude)
            self.presence = cache.presence
            cache.ensure(components, self.reader, workers=workers, skip_unreadable=skip_unreadable,
                         progress=progress)
            self._cache = {array_key(c.name): cache.load(c) for c in components}
            self.refs = cache.refs
            self._names = cache.names
            valid = np.logical_and.reduce([c.valid for c in self._cache.values()])
            self.skipped = self._names.names(np.flatnonzero(~valid))
            self._rows = np.flatnonzero(valid)
        else:
            self.presence = self.archive.presence(self.split, exclude=exclude)
            self.refs = self.archive.patches(self.split, exclude=exclude)
            self._names = PatchNames.from_refs(self.refs)
            self._rows = np.arange(len(self.refs))
        if len(self._rows) == 0:
            raise DataError(
                f"The {self.split!r} split of the {self.archive.describe()} holds no readable "
                f"patches ({self.presence.describe()}; split lists from "
                f"{self.archive.split_source}). Put the split's patches under the root, or check "
                "the split name."
            )

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def patch_names(self) -> list[str]:
        return self._names.names(self._rows)

    @property
    def rows(self) -> np.ndarray:
        """The cache rows (or archive positions) this dataset holds, in order."""
        return self._rows

    @property
    def s2_channels(self) -> list[int]:
        """Which of the ten cached S2 bands ``image_s2`` holds (all, or RGB's three)."""
        return list(self._channels)

    def cache_arrays(self) -> dict[str, np.ndarray]:
        """The memory-mapped cache arrays (``s2``, ``s1``, ``label``; all rows, read-only),
        for the batch loader (:mod:`mmvit.data.loader`), which gathers whole batches."""
        if self._cache is None:
            raise DataError("Cache arrays exist for cached datasets only; pass cache_dir.")
        return {key: c.array for key, c in self._cache.items()}

    def stats(self) -> dict[str, ChannelStats]:
        """Per-channel statistics of this split (cached datasets only), keyed ``s2``/``s1``."""
        if self._cache is None:
            raise DataError("Channel statistics are computed when a split is cached; pass cache_dir.")
        out = {}
        for key in ("s2", "s1"):
            if key in self._cache and self._cache[key].stats is not None:
                stats = self._cache[key].stats
                out[key] = stats.select(self._channels) if key == "s2" else stats
        return out

    def label_matrix(self) -> np.ndarray:
        """Multi-hot labels (N, 19) of all samples, without reading images."""
        if self._cache is not None:
            return np.asarray(self._cache["label"].array[self._rows])
        return np.stack([label_vector(self.refs[row]) for row in self._rows])

    def _arrays(self, row: int) -> dict[str, np.ndarray]:
        if self._cache is not None:
            return {key: np.asarray(c.array[row]) for key, c in self._cache.items()}
        return self.reader(self.refs[row])

    def _read(self, index: int) -> tuple[int, dict[str, np.ndarray]]:
        """The row read and its arrays; with ``skip_unreadable`` the next readable row."""
        if not self.skip_unreadable or self._cache is not None:
            row = int(self._rows[index])
            return row, self._arrays(row)
        for step in range(len(self._rows)):
            row = int(self._rows[(index + step) % len(self._rows)])
            try:
                return row, self._arrays(row)
            except DataError as error:
                if self.refs[row].patch not in self.skipped:
                    self.skipped.append(self.refs[row].patch)
                    log.warning("Skipping unreadable patch (%d so far): %s", len(self.skipped), error)
        raise DataError(f"No patch of the {self.split!r} split of the {self.archive.describe()} is readable.")

    def __getitem__(self, index: int) -> Sample:
        row, arrays = self._read(index)
        sample: Sample = {}
        if self._optical:
            s2 = arrays["s2"]
            s2 = s2 if len(self._channels) == len(s2) else s2[self._channels]
            sample["image_s2"] = torch.from_numpy(s2.astype(np.float32))  # the one copy
        if self._with_s1:
            sample["image_s1"] = torch.from_numpy(arrays["s1"].astype(np.float32, copy=True))
        sample["label"] = torch.from_numpy(arrays["label"].astype(np.float32))
        sample["patch"] = self._names.name(row)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample
