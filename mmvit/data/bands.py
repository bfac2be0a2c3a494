"""Sentinel band names, their native resolutions, and the modalities a dataset can return.

The thesis (§6.1) uses the ten 10 m and 20 m Sentinel-2 bands, with the 20 m bands upsampled
to 120×120, and drops the 60 m bands B01 and B09. The order below is fixed: it is the
channel order of every ``image_s2`` tensor this package produces.
"""

from __future__ import annotations

S2_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
"""The thesis's ten S2 bands, in channel order."""

S2_ALL_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
)
"""All twelve bands of a BigEarthNet S2 patch folder."""

S2_BAND_SIZE: dict[str, int] = {
    **{b: 120 for b in ("B02", "B03", "B04", "B08")},
    **{b: 60 for b in ("B05", "B06", "B07", "B8A", "B11", "B12")},
    **{b: 20 for b in ("B01", "B09")},
}
"""Native pixel size of each S2 band in a 1.2 km × 1.2 km patch (10 m, 20 m, 60 m)."""

RGB_BANDS: tuple[str, ...] = ("B04", "B03", "B02")
"""Red, green, blue — the ``rgb`` modality."""

S1_BANDS: tuple[str, ...] = ("VV", "VH")
"""Sentinel-1 polarisations, in channel order of every ``image_s1`` tensor."""

PATCH_SIZE = 120
"""Side length in pixels of every model input (10 m ground sampling)."""

MODALITIES: dict[str, tuple[str, ...]] = {
    "s2": ("s2",),
    "s1": ("s1",),
    "rgb": ("rgb",),
    "s2+s1": ("s2", "s1"),
    "rgb+s1": ("rgb", "s1"),
}
"""Modality sets a dataset accepts, and the optical/SAR parts each one needs."""


def optical_bands(modalities: str) -> tuple[str, ...]:
    """The S2 bands a modality set needs, in channel order (empty for ``s1``)."""
    parts = MODALITIES[modalities]
    if "s2" in parts:
        return S2_BANDS
    if "rgb" in parts:
        return RGB_BANDS
    return ()


def uses_s1(modalities: str) -> bool:
    """Whether a modality set includes the SAR image."""
    return "s1" in MODALITIES[modalities]


def input_channels(modalities: str) -> dict[str, int]:
    """Channels per model input key (``{"s2": 10, "s1": 2}``; RGB counts as the ``s2`` input)."""
    channels: dict[str, int] = {}
    if optical_bands(modalities):
        channels["s2"] = len(optical_bands(modalities))
    if uses_s1(modalities):
        channels["s1"] = len(S1_BANDS)
    return channels
