"""The dataset against the six real BigEarthNet patches shipped by bigearthnet-common."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from bigearthnet_common import base as ben
from rasterio.enums import Resampling

from mmvit.data.bands import S2_BANDS, S2_BAND_SIZE
from mmvit.data.bigearthnet import BigEarthNetMM

SNOWY = "S2B_MSIL2A_20180204T94161_57_38"  # in bigearthnet-common's seasonal-snow list


def _direct_s2(folder, patch, band):
    with rasterio.open(folder / f"{patch}_{band}.tif") as src:
        if src.width == 120:
            return src.read(1)
        return src.read(1, out_shape=(120, 120), resampling=Resampling.bilinear)


@pytest.fixture(scope="module")
def examples(example_root):
    return BigEarthNetMM(example_root, split="all", modalities="s2+s1", exclude=False)


def test_all_six_pairs_load_with_their_s1_partner(examples, example_root):
    assert len(examples) == 6
    for index in range(6):
        sample = examples[index]
        ref = examples.refs[index]
        meta = json.loads((ref.s1_dir / f"{ref.s1_patch}_labels_metadata.json").read_text())
        assert meta["corresponding_s2_patch"] == sample["patch"]


def test_s2_bands_match_a_direct_rasterio_read(examples, example_root):
    for index in range(len(examples)):
        sample, ref = examples[index], examples.refs[index]
        image = sample["image_s2"]
        assert image.shape == (10, 120, 120) and str(image.dtype) == "torch.float32"
        for channel, band in enumerate(S2_BANDS):
            expected = _direct_s2(ref.s2_dir, ref.patch, band)
            np.testing.assert_array_equal(image[channel].numpy(), expected.astype(np.float32))
        # A 20 m band upsampled bilinearly stays close to its native pixels (block means agree).
        with rasterio.open(ref.s2_dir / f"{ref.patch}_B11.tif") as src:
            native = src.read(1).astype(np.float64)
        assert S2_BAND_SIZE["B11"] == 60
        upsampled = image[S2_BANDS.index("B11")].numpy().reshape(60, 2, 60, 2).mean(axis=(1, 3))
        assert np.corrcoef(upsampled.ravel(), native.ravel())[0, 1] > 0.97


def test_s1_is_float32_db_without_rounding(examples):
    for index in range(len(examples)):
        sample, ref = examples[index], examples.refs[index]
        for channel, band in enumerate(("VV", "VH")):
            with rasterio.open(ref.s1_dir / f"{ref.s1_patch}_{band}.tif") as src:
                expected = src.read(1)
            got = sample["image_s1"][channel].numpy()
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, expected)
            assert np.any(got != np.round(got)), "S1 dB values must keep their fractions"


def test_labels_are_the_19_class_conversion_in_canonical_order(examples):
    for index in range(len(examples)):
        sample, ref = examples[index], examples.refs[index]
        meta = json.loads((ref.s2_dir / f"{ref.patch}_labels_metadata.json").read_text())
        expected = ben.ben_19_labels_to_multi_hot(ben.old2new_labels(meta["labels"]), lex_sorted=False)
        assert sample["label"].tolist() == expected


def test_snowy_patch_is_excluded_by_default(example_root):
    dataset = BigEarthNetMM(example_root, split="all")
    assert len(dataset) == 5 and SNOWY not in dataset.patch_names


@pytest.mark.parametrize("split, count", [("train", 269_695), ("validation", 123_723), ("test", 125_866)])
def test_official_split_sizes(example_root, split, count):
    """The split lists are the official ones; the six example patches are all this root holds."""
    from mmvit.data.archive import open_archive

    assert open_archive(example_root).presence(split).listed == count


def test_rgb_is_b04_b03_b02(example_root, examples):
    rgb = BigEarthNetMM(example_root, split="all", modalities="rgb+s1", exclude=False)
    sample, full = rgb[0], examples[0]
    assert rgb[0]["image_s2"].shape == (3, 120, 120)
    for channel, band in enumerate(("B04", "B03", "B02")):
        assert sample["image_s2"][channel].equal(full["image_s2"][S2_BANDS.index(band)])
    assert sample["image_s1"].equal(full["image_s1"])


@pytest.mark.parametrize("modalities, keys", [
    ("s2", {"image_s2"}), ("s1", {"image_s1"}), ("rgb", {"image_s2"}),
    ("s2+s1", {"image_s2", "image_s1"}), ("rgb+s1", {"image_s2", "image_s1"}),
])
def test_modalities_return_their_images(example_root, modalities, keys):
    sample = BigEarthNetMM(example_root, split="all", modalities=modalities)[0]
    assert {k for k in sample if k.startswith("image_")} == keys
