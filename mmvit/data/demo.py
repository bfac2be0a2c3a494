"""A synthetic BigEarthNet-MM archive in the exact v1 layout, for tests, demos and smoke runs.

The archive lets every part of the package (archive discovery, readers, cache, training) run
without the 121 GB download, and its signal is built so that *fusion matters*: a model that
sees both S2 and S1 can beat either modality alone, as on the real archive.

Layout (as in BigEarthNet v1.0 and BigEarthNet-S1 v1.0, real GeoTIFFs written with rasterio)::

    out/BigEarthNet-v1.0/<S2>/<S2>_<band>.tif       12 bands, uint16, 120/60/20 px (10/20/60 m)
    out/BigEarthNet-v1.0/<S2>/<S2>_labels_metadata.json
    out/BigEarthNet-S1-v1.0/<S1>/<S1>_VV.tif, _VH.tif   float32 dB, 120 px, same footprint
    out/BigEarthNet-S1-v1.0/<S1>/<S1>_labels_metadata.json
    out/splits/{train,val,test}.csv                  "S2name,S1name" lines, 50 % / 25 % / 25 %
    out/mmvit_demo.json                              generator, version, patches, seed

Names copy five real S2 products and their S1 partners, one per UTM zone 29, 31, 33, 34 and
35 (EPSG:326zz), with grid positions ``<col>_<row>`` drawn without repetition. These products
have no patch on the official snow, cloud or no-label lists, so the official exclusions never
drop a demo patch. The S1 JSON spells the lower-right northing ``lly``, as the real S1 archive
does.

Generative model
----------------
*Labels* (:func:`draw_labels`). Each of the 19 classes is drawn independently with probability
``CLASS_PATCH_COUNTS[c] / ARCHIVE_PATCHES`` (about 2.9 labels per patch, several per patch, as
in the archive), floored at 6 % so that the rarest classes (Beaches, Coastal wetlands: 0.26 %
in the archive) still occur about 36 times in 600 patches: about 18 in the training split and
9 in each other. At 3 % (version 1) a 600-patch archive could hold 3 training patches of a
class; no model learns a class from 3 examples, and the AP of a class with 3 test positives is
noise that swamps the differences between arms of a study. A
patch that draws no class gets one, drawn in proportion to the same probabilities. The JSON
lists, per class, one of its 43-class CORINE names picked at random.

*Scene* (:func:`scene_layout`). The 120×120 patch is cut into cells: every label owns one cell
and up to two extra cells repeat labels at random. Cell areas are a Dirichlet draw on top of a
floor of 10 % per label-owning cell (less only beyond 9 labels); the cells are a treemap of
rectangles with exactly those areas, and a smooth random warp of the pixel grid (±6 px) makes
their boundaries irregular. Every label thus covers at least about 8 % of the patch.

*Groups* (:data:`CLASS_GROUPS`). Each class ``c`` has an S2 spectral group ``g2(c)`` and an S1
backscatter group ``g1(c)``; ``c -> (g2, g1)`` is injective, so S2+S1 identifies every class.
Six classes have a spectrum of their own (arable land, pastures, natural grassland, beaches,
inland and marine waters): S2 alone separates them. The others share a spectrum with one or
two classes and differ only in SAR: urban / industrial, permanent crops / agro-forestry,
complex cultivation / agriculture with natural vegetation, broad-leaved / coniferous / mixed
forest, moors / transitional woodland, inland / coastal wetlands. The SAR groups are coarser
(nine for 19 classes; only marine waters, urban and industrial have their own), and cut across
the spectral ones: transitional woodland shares its spectrum with moors and its backscatter
with broad-leaved forest, so it needs both. S2 alone confuses 13 classes, S1 alone 16.

*S2* (:data:`S2_GROUPS`). A group has a mean 12-band reflectance × 10⁴ (uint16 values of about
150..4600). Per cell every band is jittered by 5 %, the patch gets one gain in [0.85, 1.15]
(illumination), each pixel a smooth 5 % within-field variation. The clean image is rendered
at 10 m (120 px), block-averaged to 60 px (20 m bands) and 20 px (60 m bands), and each band
gets Gaussian sensor noise (2 % + 15 DN) at its native pixel size.

*S1* (:data:`S1_GROUPS`). A group has a mean VV and VH in dB (VV -22..-4, VH -28..-11) and a
texture strength ``t``. Per cell both means move by N(0, 0.6 dB) (field-to-field moisture and
roughness), the whole patch by N(0, 1 dB) (incidence angle: an IW swath spans 29–46°). With
0.3 dB and 0.3 dB (version 1) the SAR groups were so cleanly apart that a ViT on S1 alone learned
them from 300 patches sooner than a ViT on S2 learned its twelve finer groups, so the learned
S2 > S1 step depended on the training budget (S1 caught up with S2 at 30 epochs) rather than on
what each modality can tell. Linear power = 10^(dB/10) × exp(t·F − t²/2), F a smooth
unit-variance field (about 5 px grain) shared by VV and VH, times speckle ~ Gamma(shape=L,
scale=1/L) with L = 4.4 (the ENL of IW GRD-H), independent per pixel and polarisation; stored
as 10·log10(power), float32, unrounded.

Everything is drawn from ``numpy.random.default_rng`` seeded by ``seed`` (and the patch
index), so the same ``(patches, seed)`` gives byte-identical files.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from mmvit.data.bands import PATCH_SIZE, S1_BANDS, S2_ALL_BANDS, S2_BAND_SIZE
from mmvit.data.labels import ARCHIVE_PATCHES, CLASS_PATCH_COUNTS, LABELS_19, names_43_for
from mmvit.data.splits import SPLIT_FILES
from mmvit.errors import DataError, SpecError

GENERATOR = "mmvit.data.demo"
VERSION = 2
MARKER = "mmvit_demo.json"
S2_DIR = "BigEarthNet-v1.0"
S1_DIR = "BigEarthNet-S1-v1.0"

MIN_CLASS_PROBABILITY = 0.06
"""Floor on a class's draw probability, so that rare classes occur in small archives."""

LABEL_AREA_FLOOR = 0.10
"""Target minimum share of the patch of each label's own cell."""

ILLUMINATION = 0.15
"""Half-width of the patch-wide S2 gain, uniform in [1 - ILLUMINATION, 1 + ILLUMINATION]."""

CELL_JITTER = 0.05
"""Relative standard deviation of each cell's S2 band means around its group's spectrum."""

S1_CELL_SPREAD_DB = 0.6
"""Standard deviation of each cell's VV and VH means around its group's (field-to-field variation)."""

S1_PATCH_SPREAD_DB = 1.0
"""Standard deviation of the patch-wide VV and VH offset (incidence angle, moisture)."""

SPECKLE_LOOKS = 4.4
"""Equivalent number of looks of Sentinel-1 IW GRD-H: the shape of the Gamma speckle."""

S2_GROUPS: dict[str, tuple[int, ...]] = {
    #                   B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09   B11   B12
    "built-up":       (1200, 1150, 1250, 1300, 1500, 1750, 1850, 1900, 1950, 700, 2100, 1800),
    "green crops":    (600, 500, 900, 600, 1300, 3200, 3900, 4100, 4300, 1400, 2600, 1500),
    "tree crops":     (700, 650, 900, 1000, 1400, 2000, 2300, 2450, 2550, 900, 2900, 2300),
    "meadow":         (350, 300, 700, 400, 1000, 2600, 3200, 3400, 3500, 1100, 1800, 900),
    "dry sparse":     (1300, 1400, 1700, 2000, 2250, 2400, 2500, 2550, 2600, 900, 3500, 3100),
    "mosaic":         (600, 550, 800, 750, 1200, 2300, 2700, 2850, 2950, 950, 2200, 1400),
    "forest":         (220, 200, 400, 220, 700, 1900, 2350, 2500, 2600, 850, 1200, 550),
    "shrubland":      (450, 450, 650, 600, 950, 1500, 1700, 1800, 1850, 650, 2000, 1300),
    "sand":           (2400, 2700, 3100, 3400, 3600, 3750, 3850, 3900, 4000, 1400, 4600, 4100),
    "wet vegetation": (550, 520, 700, 480, 750, 1200, 1400, 1450, 1500, 450, 650, 300),
    "fresh water":    (650, 600, 650, 420, 380, 450, 500, 500, 480, 160, 250, 150),
    "sea water":      (700, 650, 600, 400, 300, 220, 200, 180, 160, 60, 100, 70),
}
"""S2 spectral groups: mean reflectance × 10⁴ in ``S2_ALL_BANDS`` order."""

S1_GROUPS: dict[str, tuple[float, float, float]] = {
    "calm": (-22.0, -28.0, 0.05),
    "sea": (-15.0, -24.0, 0.30),
    "bare": (-13.0, -21.0, 0.10),
    "low canopy": (-10.0, -17.0, 0.10),
    "broad-leaved": (-8.0, -13.5, 0.15),
    "needle-leaved": (-6.5, -11.0, 0.30),
    "mixed canopy": (-9.5, -12.0, 0.20),
    "urban": (-4.0, -11.0, 0.60),
    "industrial": (-5.5, -17.0, 0.80),
}
"""S1 backscatter groups: mean VV dB, mean VH dB, texture strength."""

CLASS_GROUPS: dict[str, tuple[str, str]] = {
    "Urban fabric": ("built-up", "urban"),
    "Industrial or commercial units": ("built-up", "industrial"),
    "Arable land": ("green crops", "bare"),
    "Permanent crops": ("tree crops", "low canopy"),
    "Pastures": ("meadow", "bare"),
    "Complex cultivation patterns": ("mosaic", "bare"),
    "Land principally occupied by agriculture, with significant areas of natural vegetation":
        ("mosaic", "needle-leaved"),
    "Agro-forestry areas": ("tree crops", "broad-leaved"),
    "Broad-leaved forest": ("forest", "broad-leaved"),
    "Coniferous forest": ("forest", "needle-leaved"),
    "Mixed forest": ("forest", "mixed canopy"),
    "Natural grassland and sparsely vegetated areas": ("dry sparse", "low canopy"),
    "Moors, heathland and sclerophyllous vegetation": ("shrubland", "low canopy"),
    "Transitional woodland, shrub": ("shrubland", "broad-leaved"),
    "Beaches, dunes, sands": ("sand", "calm"),
    "Inland wetlands": ("wet vegetation", "mixed canopy"),
    "Coastal wetlands": ("wet vegetation", "calm"),
    "Inland waters": ("fresh water", "calm"),
    "Marine waters": ("sea water", "sea"),
}
"""(S2 group, S1 group) of each 19-class label; injective, so only S2+S1 tells all apart."""


@dataclass(frozen=True)
class _Scene:
    """A real S2 product and its S1 partner, which demo patches borrow names and a CRS from."""

    s2_product: str
    s1_product: str
    epsg: int
    origin: tuple[int, int]
    tile_source: str
    scene_source: str


_SCENES: tuple[_Scene, ...] = (
    _Scene("S2A_MSIL2A_20171121T112351", "S1B_IW_GRDH_1SDV_20171121T064205_29SND", 32629,
           (499980, 4400040), "S2A_MSIL1C_20171121T112351_N0206_R037_T29SND_20171121T114438.SAFE",
           "S1B_IW_GRDH_1SDV_20171121T064205_20171121T064230_008366_00ED1E_5A4C"),
    _Scene("S2B_MSIL2A_20180225T105019", "S1A_IW_GRDH_1SDV_20180225T055027_31UER", 32631,
           (499980, 5700000), "S2B_MSIL1C_20180225T105019_N0206_R051_T31UER_20180225T125120.SAFE",
           "S1A_IW_GRDH_1SDV_20180225T055027_20180225T055052_020754_0238F4_9C1B"),
    _Scene("S2A_MSIL2A_20180506T100031", "S1A_IW_GRDH_1SDV_20180507T050948_33UWP", 32633,
           (499980, 5400000), "S2A_MSIL1C_20180506T100031_N0206_R122_T33UWP_20180506T121205.SAFE",
           "S1A_IW_GRDH_1SDV_20180507T050948_20180507T051013_021775_025940_1D7E"),
    _Scene("S2B_MSIL2A_20170814T100029", "S1A_IW_GRDH_1SDV_20170816T050628_34VDM", 32634,
           (399960, 6300000), "S2B_MSIL1C_20170814T100029_N0205_R122_T34VDM_20170814T100419.SAFE",
           "S1A_IW_GRDH_1SDV_20170816T050628_20170816T050653_017950_01E1C4_7B20"),
    _Scene("S2B_MSIL2A_20180515T094029", "S1B_IW_GRDH_1SDV_20180517T154802_35VNJ", 32635,
           (499980, 6900000), "S2B_MSIL1C_20180515T094029_N0206_R036_T35VNJ_20180515T114317.SAFE",
           "S1B_IW_GRDH_1SDV_20180517T154802_20180517T154827_010949_014092_E2A3"),
)
_GRID = 90
"""Patch positions used per side of a tile (a 109.8 km S2 tile holds 91 of 1.2 km)."""
_PATCH_METRES = PATCH_SIZE * 10
MAX_PATCHES = len(_SCENES) * _GRID**2


# --------------------------------------------------------------------------- public API


def write_demo_archive(out: Path, patches: int = 600, seed: int = 0, progress: bool = False) -> Path:
    """Write a demo archive to ``out`` atomically and return ``out``.

    A folder that already holds the demo archive of the same ``(patches, seed)`` is returned
    as it is; any other non-empty ``out`` is refused rather than mixed with demo files.
    """
    out = Path(out).expanduser()
    if not 3 <= patches <= MAX_PATCHES:
        raise SpecError(
            f"A demo archive has between 3 patches (one per split) and {MAX_PATCHES:,} (every "
            f"grid position of its five tiles), but patches={patches}. Ask for a number in that range."
        )
    if seed < 0:
        raise SpecError(f"The demo archive's seed must be 0 or more, but seed={seed}.")
    if _occupied(out):
        return _existing(out, patches, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _write_archive(staging, patches, seed, progress)
        staging.chmod(0o755)  # mkdtemp made it private
        os.replace(staging, out)
    except OSError as error:
        if not _is_demo(out, patches, seed):  # else a concurrent writer finished first
            raise DataError(f"Could not write the demo archive to {out}: {error}.") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def default_demo_root(patches: int = 600, seed: int = 0) -> Path:
    """``<parent>/demo-v{VERSION}-n{patches}-s{seed}``; the parent is ``$MMVIT_DEMO_DIR`` or
    ``~/.cache/mmvit-study``, so archives of different sizes and seeds live side by side."""
    parent = Path(os.environ.get("MMVIT_DEMO_DIR") or Path.home() / ".cache" / "mmvit-study")
    return parent.expanduser() / f"demo-v{VERSION}-n{patches}-s{seed}"


def ensure_demo_archive(patches: int = 600, seed: int = 0) -> Path:
    """The demo archive at :func:`default_demo_root`, written first if it is not there."""
    return write_demo_archive(default_demo_root(patches, seed), patches=patches, seed=seed)


def class_probabilities() -> np.ndarray:
    """Per-class draw probability in canonical order: archive frequency, floored at 6 %."""
    frequency = np.array([CLASS_PATCH_COUNTS[name] / ARCHIVE_PATCHES for name in LABELS_19])
    return np.maximum(frequency, MIN_CLASS_PROBABILITY)


def draw_labels(rng: np.random.Generator, patches: int) -> np.ndarray:
    """Multi-hot bool (patches, 19): independent draws, one class added where none came up."""
    probability = class_probabilities()
    labels = rng.random((patches, len(LABELS_19))) < probability
    empty = np.flatnonzero(~labels.any(axis=1))
    labels[empty, rng.choice(len(LABELS_19), size=len(empty), p=probability / probability.sum())] = True
    return labels


def scene_layout(rng: np.random.Generator, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut a patch into cells: (cell index per pixel, 120×120; class index of each cell).

    Every class in ``classes`` owns the first cells, one each; extra cells repeat classes.
    """
    extra = int(rng.integers(0, 3))
    cell_classes = np.concatenate([classes, rng.choice(classes, size=extra)])
    floor = np.concatenate([np.full(len(classes), min(LABEL_AREA_FLOOR, 0.9 / len(classes))),
                            np.full(extra, 0.02)])
    targets = floor + (1 - floor.sum()) * rng.dirichlet(np.ones(len(cell_classes)))
    return _cell_map(rng, targets), cell_classes


# --------------------------------------------------------------------------- rendering


@functools.cache
def _s2_signatures() -> np.ndarray:
    """(19, 12) mean S2 reflectance × 10⁴ of each class."""
    return np.array([S2_GROUPS[CLASS_GROUPS[name][0]] for name in LABELS_19], dtype=float)


@functools.cache
def _s1_parameters() -> np.ndarray:
    """(19, 3) mean VV dB, mean VH dB and texture strength of each class."""
    return np.array([S1_GROUPS[CLASS_GROUPS[name][1]] for name in LABELS_19])


def _smooth_field(rng: np.random.Generator, coarse: int) -> np.ndarray:
    """A 120×120 unit-variance random field, smooth over 120/coarse pixels."""
    field = ndimage.zoom(rng.standard_normal((coarse, coarse)), PATCH_SIZE / coarse, order=3,
                         mode="reflect", grid_mode=True)
    return (field - field.mean()) / field.std()


def _cell_map(rng: np.random.Generator, shares: np.ndarray) -> np.ndarray:
    """Cell index per pixel: a treemap of rectangles with these area shares, smoothly warped."""
    boxes = np.zeros((len(shares), 4))
    _split_box(rng.permutation(len(shares)), shares, (0.0, 0.0, PATCH_SIZE, PATCH_SIZE), boxes)
    rows, cols = np.mgrid[0:PATCH_SIZE, 0:PATCH_SIZE].astype(float)
    rows = np.clip(rows + 0.5 + 6 * _smooth_field(rng, 6), 0, np.nextafter(PATCH_SIZE, 0))
    cols = np.clip(cols + 0.5 + 6 * _smooth_field(rng, 6), 0, np.nextafter(PATCH_SIZE, 0))
    top, left, bottom, right = (edge[:, None, None] for edge in boxes.T)
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    return np.argmax(inside, axis=0)


def _split_box(order: np.ndarray, shares: np.ndarray, box: tuple[float, float, float, float],
               boxes: np.ndarray) -> None:
    """Cut ``box`` across its longer side in proportion to the shares of both halves of ``order``."""
    if len(order) == 1:
        boxes[order[0]] = box
        return
    first, second = order[: len(order) // 2], order[len(order) // 2:]
    fraction = shares[first].sum() / shares[order].sum()
    top, left, bottom, right = box
    if bottom - top >= right - left:
        middle = top + fraction * (bottom - top)
        halves = (top, left, middle, right), (middle, left, bottom, right)
    else:
        middle = left + fraction * (right - left)
        halves = (top, left, bottom, middle), (top, middle, bottom, right)
    _split_box(first, shares, halves[0], boxes)
    _split_box(second, shares, halves[1], boxes)


def _render_s2(rng: np.random.Generator, cells: np.ndarray, cell_classes: np.ndarray) -> dict[str, np.ndarray]:
    """The 12 S2 bands (uint16) at their native sizes, with sensor noise per native pixel."""
    spectra = _s2_signatures()[cell_classes]
    spectra = (spectra * (1 + CELL_JITTER * rng.standard_normal(spectra.shape))
               * rng.uniform(1 - ILLUMINATION, 1 + ILLUMINATION))
    image = np.moveaxis(spectra[cells], -1, 0) * (1 + 0.05 * _smooth_field(rng, 12))
    bands = {}
    for index, band in enumerate(S2_ALL_BANDS):
        size = S2_BAND_SIZE[band]
        block = PATCH_SIZE // size
        mean = image[index].reshape(size, block, size, block).mean(axis=(1, 3))
        noisy = mean + rng.standard_normal(mean.shape) * (0.02 * mean + 15)
        bands[band] = np.clip(np.rint(noisy), 1, np.iinfo(np.uint16).max).astype(np.uint16)
    return bands


def _render_s1(rng: np.random.Generator, cells: np.ndarray, cell_classes: np.ndarray) -> dict[str, np.ndarray]:
    """VV and VH backscatter in dB (float32, 120×120) with texture and Gamma speckle."""
    parameters = _s1_parameters()[cell_classes]
    mean_db = (parameters[:, :2] + rng.normal(0, S1_CELL_SPREAD_DB, size=(len(cell_classes), 2))
               + rng.normal(0, S1_PATCH_SPREAD_DB))
    strength = parameters[:, 2][cells]
    texture = np.exp(strength * _smooth_field(rng, 24) - strength**2 / 2)
    bands = {}
    for index, band in enumerate(S1_BANDS):
        speckle = rng.gamma(SPECKLE_LOOKS, 1 / SPECKLE_LOOKS, size=cells.shape)
        power = 10 ** (mean_db[:, index][cells] / 10) * texture * speckle
        bands[band] = (10 * np.log10(power)).astype(np.float32)
    return bands


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Patch:
    """Names and footprint of one demo patch pair."""

    s2_name: str
    s1_name: str
    scene: _Scene
    ulx: int
    uly: int


def _plan_patches(rng: np.random.Generator, patches: int) -> list[_Patch]:
    """Give each patch a scene and a grid position, never the same twice."""
    plan = []
    for slot in rng.choice(MAX_PATCHES, size=patches, replace=False):
        scene = _SCENES[slot // _GRID**2]
        col, row = divmod(int(slot % _GRID**2), _GRID)
        plan.append(_Patch(f"{scene.s2_product}_{col}_{row}", f"{scene.s1_product}_{col}_{row}",
                           scene, scene.origin[0] + col * _PATCH_METRES,
                           scene.origin[1] - row * _PATCH_METRES))
    return plan


@functools.cache
def _crs(epsg: int):
    from rasterio.crs import CRS

    return CRS.from_epsg(epsg)


def _write_tif(path: Path, array: np.ndarray, patch: _Patch) -> None:
    """One single-band, uncompressed GeoTIFF with the patch's CRS and a pixel-size transform."""
    import rasterio
    from rasterio.transform import Affine

    pixel = _PATCH_METRES / array.shape[0]
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0],
                       count=1, dtype=array.dtype.name, crs=_crs(patch.scene.epsg),
                       transform=Affine(pixel, 0, patch.ulx, 0, -pixel, patch.uly)) as dataset:
        dataset.write(array, 1)


def _timestamp(product: str) -> str:
    """``YYYYMMDDTHHMMSS`` of a product name, as ``YYYY-MM-DDTHH:MM:SS``."""
    stamp = next(part for part in product.split("_") if len(part) == 15 and part[8] == "T")
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"


def _metadata(patch: _Patch, names_43: list[str], *, s1: bool) -> dict:
    """The ``labels_metadata.json`` content, with the keys (and the S1 ``lly``) of the archive."""
    south = "lly" if s1 else "lry"
    coordinates = {"ulx": patch.ulx, "uly": patch.uly, "lrx": patch.ulx + _PATCH_METRES,
                   south: patch.uly - _PATCH_METRES}
    common = {"labels": names_43, "coordinates": coordinates,
              "projection": _crs(patch.scene.epsg).to_wkt()}
    if s1:
        return {**common, "corresponding_s2_patch": patch.s2_name,
                "scene_source": patch.scene.scene_source,
                "acquisition_time": _timestamp(patch.scene.s1_product)}
    return {**common, "tile_source": patch.scene.tile_source,
            "acquisition_date": _timestamp(patch.scene.s2_product).replace("T", " ")}


def _write_patch(root: Path, patch: _Patch, classes: np.ndarray, rng: np.random.Generator) -> None:
    """Render one S2/S1 pair and write its band files and label JSONs."""
    cells, cell_classes = scene_layout(rng, classes)
    names_43 = [str(rng.choice(names_43_for(LABELS_19[c]))) for c in classes]
    for folder, name, bands, s1 in (
        (S2_DIR, patch.s2_name, _render_s2(rng, cells, cell_classes), False),
        (S1_DIR, patch.s1_name, _render_s1(rng, cells, cell_classes), True),
    ):
        directory = root / folder / name
        directory.mkdir(parents=True)
        for band, array in bands.items():
            _write_tif(directory / f"{name}_{band}.tif", array, patch)
        text = json.dumps(_metadata(patch, names_43, s1=s1))
        (directory / f"{name}_labels_metadata.json").write_text(text)


def _write_splits(root: Path, rng: np.random.Generator, plan: list[_Patch]) -> None:
    """50 / 25 / 25 % of the patches (at least one each), as sorted "S2,S1" lines."""
    order = rng.permutation(len(plan))
    quarter = max(1, len(plan) // 4)
    parts = {"train": order[: len(plan) - 2 * quarter],
             "validation": order[len(plan) - 2 * quarter: -quarter], "test": order[-quarter:]}
    (root / "splits").mkdir()
    for split, indices in parts.items():
        lines = sorted(f"{plan[i].s2_name},{plan[i].s1_name}\n" for i in indices)
        (root / "splits" / SPLIT_FILES[split]).write_text("".join(lines))


def _write_archive(root: Path, patches: int, seed: int, progress: bool) -> None:
    """Everything, into ``root``; the marker file last."""
    import rasterio
    from rich.progress import track

    rng = np.random.default_rng(seed)
    plan = _plan_patches(rng, patches)
    labels = draw_labels(rng, patches)
    _write_splits(root, rng, plan)
    with rasterio.Env():
        for index in track(range(patches), description="Writing demo patches", disable=not progress):
            _write_patch(root, plan[index], np.flatnonzero(labels[index]),
                         np.random.default_rng([seed, index]))
    (root / MARKER).write_text(json.dumps(_marker(patches, seed)))


def _marker(patches: int, seed: int) -> dict:
    return {"generator": GENERATOR, "version": VERSION, "patches": patches, "seed": seed}


def _occupied(out: Path) -> bool:
    return out.exists() and (not out.is_dir() or any(out.iterdir()))


def _is_demo(out: Path, patches: int, seed: int) -> bool:
    try:
        return json.loads((out / MARKER).read_text()) == _marker(patches, seed)
    except (OSError, ValueError):
        return False


def _existing(out: Path, patches: int, seed: int) -> Path:
    """``out`` if it already is this demo archive; a clear refusal otherwise."""
    if _is_demo(out, patches, seed):
        return out
    raise DataError(
        f"The folder {out} already exists and is not empty, and it is not a demo archive with "
        f"patches={patches} and seed={seed} of generator version {VERSION} (no matching {MARKER}). "
        "The demo writer never mixes its files with others: choose a new or empty folder, or "
        "delete this one."
    )
