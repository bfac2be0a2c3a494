"""Read one BigEarthNet patch from its GeoTIFFs with rasterio.

This is the only place that opens band files, so the direct dataset path and the cache
conversion produce identical arrays. The 20 m bands are resampled to 120×120 by GDAL while
reading (``out_shape``), bilinear by default. S1 values are returned as stored: float32 dB,
never rounded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from mmvit.data.bands import PATCH_SIZE, S1_BANDS, S2_BAND_SIZE
from mmvit.errors import DataError

RESAMPLING: dict[str, Resampling] = {
    "nearest": Resampling.nearest,
    "bilinear": Resampling.bilinear,
    "cubic": Resampling.cubic,
    "cubic_spline": Resampling.cubic_spline,
    "lanczos": Resampling.lanczos,
}
"""Resampling methods for upsampling the 20 m bands to 120×120."""

# Opening a GeoTIFF makes GDAL list its folder for side-car files; in an archive with
# 590k patch folders that listing dominates the read time, and BigEarthNet has no side-cars.
_GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


def check_resampling(name: str) -> Resampling:
    """The rasterio resampling enum for ``name``; a clear error for an unknown one."""
    try:
        return RESAMPLING[name]
    except KeyError:
        raise DataError(
            f"resampling must be one of {', '.join(RESAMPLING)}, but got {name!r}. "
            "Pick one of those (the thesis upsamples the 20 m bands bilinearly)."
        ) from None


def _read_band(path: Path, patch: str, *, size: int, native: int, dtype: str,
               resampling: Resampling) -> np.ndarray:
    if not path.is_file():
        raise DataError(
            f"Patch {patch!r} is missing the band file {path}. Re-extract this patch from the "
            "archive, or pass skip_unreadable=True to leave unreadable patches out (they are "
            "logged by name)."
        )
    try:
        with rasterio.open(path) as src:
            if src.count != 1 or src.width != native or src.height != native:
                raise DataError(
                    f"Patch {patch!r}: {path.name} must hold one {native}×{native} band, but it "
                    f"holds {src.count} band(s) of {src.width}×{src.height}. The file does not "
                    "belong to a BigEarthNet archive or is damaged; re-extract the patch."
                )
            if src.dtypes[0] != dtype:
                raise DataError(
                    f"Patch {patch!r}: {path.name} must be {dtype}, but it is {src.dtypes[0]}. "
                    "Re-extract the patch from the original archive."
                )
            if native == size:
                return src.read(1)
            return src.read(1, out_shape=(size, size), resampling=resampling)
    except rasterio.errors.RasterioError as error:
        raise DataError(
            f"Patch {patch!r}: the band file {path} cannot be read ({error}). Re-extract this "
            "patch, or pass skip_unreadable=True to leave unreadable patches out."
        ) from None


def read_s2(patch_dir: Path, patch: str, bands: tuple[str, ...],
            resampling: str = "bilinear") -> np.ndarray:
    """S2 bands of one patch as uint16 (len(bands), 120, 120), 20 m bands resampled."""
    method = check_resampling(resampling)
    out = np.empty((len(bands), PATCH_SIZE, PATCH_SIZE), dtype=np.uint16)
    with rasterio.Env(**_GDAL_ENV):
        for channel, band in enumerate(bands):
            out[channel] = _read_band(
                patch_dir / f"{patch}_{band}.tif", patch, size=PATCH_SIZE,
                native=S2_BAND_SIZE[band], dtype="uint16", resampling=method,
            )
    return out


def read_s1(patch_dir: Path, s1_patch: str, patch: str | None = None) -> np.ndarray:
    """VV and VH of one S1 patch as float32 dB (2, 120, 120), exactly as stored.

    ``patch`` (the pair's S2 name, the dataset's identity) is what error messages name."""
    out = np.empty((len(S1_BANDS), PATCH_SIZE, PATCH_SIZE), dtype=np.float32)
    with rasterio.Env(**_GDAL_ENV):
        for channel, band in enumerate(S1_BANDS):
            out[channel] = _read_band(
                patch_dir / f"{s1_patch}_{band}.tif", patch or s1_patch, size=PATCH_SIZE, native=PATCH_SIZE,
                dtype="float32", resampling=Resampling.nearest,
            )
    return out


def read_label_json(patch_dir: Path, patch: str) -> dict:
    """The ``<patch>_labels_metadata.json`` of a v1 patch folder."""
    path = patch_dir / f"{patch}_labels_metadata.json"
    try:
        with path.open() as handle:
            metadata = json.load(handle)
    except FileNotFoundError:
        raise DataError(
            f"Patch {patch!r} is missing its label file {path}. Re-extract this patch, or pass "
            "skip_unreadable=True to leave unreadable patches out."
        ) from None
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"Patch {patch!r}: the label file {path} cannot be read ({error}).") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("labels"), list):
        raise DataError(
            f"Patch {patch!r}: the label file {path} has no 'labels' list. It does not look like "
            "a BigEarthNet v1 label file; re-extract the patch."
        )
    return metadata
