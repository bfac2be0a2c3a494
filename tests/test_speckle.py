"""Speckle filters: exact medians, variance reduction on pure speckle, edges kept by Lee, numerics."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from mmvit.data.speckle import SpeckleFilter, parse_speckle_filter
from mmvit.errors import DataError

ENL = 4.4


def _speckled_step(seed: int = 0) -> np.ndarray:
    """A two-level scene (−17 dB | −4 dB, edge between columns 59 and 60) times Gamma(4.4) speckle."""
    rng = np.random.default_rng(seed)
    scene = np.full((2, 120, 120), 0.02)
    scene[:, :, 60:] = 0.4
    return (10 * np.log10(scene * rng.gamma(ENL, 1 / ENL, scene.shape))).astype(np.float32)


def _reference_lee(image_db: np.ndarray, size: int) -> np.ndarray:
    """The Lee filter straight from its definition, with two-pass window statistics."""
    power = 10 ** (image_db.astype(np.float64) / 10)
    r = size // 2
    padded = np.pad(power, ((0, 0), (r, r), (r, r)), mode="symmetric")  # scipy's "reflect"
    windows = sliding_window_view(padded, (size, size), axis=(1, 2))
    mean, variance = windows.mean(axis=(-2, -1)), windows.var(axis=(-2, -1))
    weight = np.clip(1 - (1 / ENL) / (variance / mean**2), 0, 1)
    return 10 * np.log10(mean + weight * (power - mean))


def test_median_is_scipy_median_per_channel():
    image = _speckled_step()
    out = parse_speckle_filter("median3").apply(image)
    for channel in range(2):
        np.testing.assert_array_equal(out[channel], ndimage.median_filter(image[channel], 3, mode="reflect"))


def test_median_in_db_equals_median_in_linear_power():
    image = np.random.default_rng(1).normal(-12, 5, (2, 50, 50)).astype(np.float32)
    in_db = parse_speckle_filter("median5").apply(image)
    linear = ndimage.median_filter(10 ** (image.astype(np.float64) / 10), size=(1, 5, 5), mode="reflect")
    np.testing.assert_allclose(in_db, 10 * np.log10(linear), atol=1e-4)


@pytest.mark.parametrize("name", ["median3", "median5", "lee5", "lee7"])
def test_filters_reduce_pure_speckle_on_a_constant_scene(name):
    rng = np.random.default_rng(2)
    image = (10 * np.log10(0.05 * rng.gamma(ENL, 1 / ENL, (2, 120, 120)))).astype(np.float32)
    out = parse_speckle_filter(name).apply(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.var() < 0.3 * image.var()


def test_lee_keeps_an_edge_sharper_than_a_box_blur():
    image = _speckled_step(3)
    lee = parse_speckle_filter("lee7").apply(image)
    power = 10 ** (image.astype(np.float64) / 10)
    box = 10 * np.log10(ndimage.uniform_filter(power, size=(1, 7, 7), mode="reflect"))
    contrast = lambda x: x[:, :, 60].mean() - x[:, :, 59].mean()  # noqa: E731  (true step: 13 dB)
    assert contrast(lee) > 1.5 * contrast(box)


def test_lee_matches_its_definition_next_to_a_very_bright_target():
    """Running-sum window statistics lose the variance of dark pixels that share a row or
    column with a target 80 dB brighter; the filter must not."""
    image = _speckled_step(4) - 30
    image[:, 60, :] += 80
    image[:, :, 5] += 80
    expected = _reference_lee(image, 7)
    np.testing.assert_allclose(parse_speckle_filter("lee7").apply(image), expected, atol=1e-3)


def test_lee_commutes_with_a_db_offset():
    image = _speckled_step(5)
    lee = parse_speckle_filter("lee5")
    np.testing.assert_allclose(lee.apply(image - 70), lee.apply(image) - 70, atol=1e-3)


def test_no_nan_for_constant_or_very_dark_images():
    for value in (-12.0, -60.0, -1e30):
        image = np.full((2, 40, 40), value, dtype=np.float32)
        for name in ("median3", "lee5"):
            out = parse_speckle_filter(name).apply(image)
            assert np.isfinite(out).all()
            np.testing.assert_allclose(out, value, rtol=1e-6, atol=1e-3)
    image = _speckled_step(6)
    image[:, :10] = -1e30  # no-data stripe next to real values
    assert np.isfinite(parse_speckle_filter("lee5").apply(image)).all()


def test_none_is_an_unchanged_copy():
    image = _speckled_step()
    out = parse_speckle_filter("none").apply(image)
    np.testing.assert_array_equal(out, image)
    assert out is not image and not np.shares_memory(out, image)


def test_input_is_not_modified():
    image = _speckled_step()
    before = image.copy()
    for name in ("median3", "lee5"):
        parse_speckle_filter(name).apply(image)
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("text", ["median4", "lee", "gauss3", "median17", "lee1", "none3", "", "5"])
def test_bad_filter_names_state_the_rule_and_the_value(text):
    with pytest.raises(DataError, match="odd k in 3..15") as error:
        parse_speckle_filter(text)
    assert repr(text) in str(error.value) and "median3" in str(error.value)


def test_direct_construction_is_checked_too():
    with pytest.raises(DataError, match="'median4'"):
        SpeckleFilter("median", 4)
    with pytest.raises(DataError, match="equivalent number of looks"):
        SpeckleFilter("lee", 5, enl=0)


def test_round_trip_of_names():
    names = ("none", "median3", "lee5", "Median15 ")
    assert [str(parse_speckle_filter(t)) for t in names] == ["none", "median3", "lee5", "median15"]
    assert parse_speckle_filter("lee7") == SpeckleFilter("lee", 7)
