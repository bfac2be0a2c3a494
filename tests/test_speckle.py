"""Speckle filters: exact medians, variance reduction on pure speckle, edges kept by Lee."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mmvit.data.speckle import parse_speckle_filter
from mmvit.errors import DataError


def _speckled_step(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scene = np.full((2, 120, 120), 0.02)
    scene[:, :, 60:] = 0.4
    return (10 * np.log10(scene * rng.gamma(4.4, 1 / 4.4, scene.shape))).astype(np.float32)


def test_median_is_scipy_median_per_channel():
    image = _speckled_step()
    out = parse_speckle_filter("median3").apply(image)
    for channel in range(2):
        np.testing.assert_array_equal(out[channel], ndimage.median_filter(image[channel], 3, mode="reflect"))


def test_median_in_db_equals_median_in_linear_power():
    image = _speckled_step(1)
    in_db = parse_speckle_filter("median5").apply(image)
    linear = ndimage.median_filter(10 ** (image.astype(np.float64) / 10), size=(1, 5, 5), mode="reflect")
    np.testing.assert_allclose(in_db, 10 * np.log10(linear), atol=1e-4)


@pytest.mark.parametrize("name", ["median3", "median5", "lee5", "lee7"])
def test_filters_reduce_speckle_on_a_flat_area(name):
    image = _speckled_step(2)
    out = parse_speckle_filter(name).apply(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out[:, :, 5:50].std() < 0.5 * image[:, :, 5:50].std()


def test_lee_keeps_an_edge_sharper_than_a_box_blur():
    image = _speckled_step(3)
    lee = parse_speckle_filter("lee7").apply(image)
    power = 10 ** (image.astype(np.float64) / 10)
    box = 10 * np.log10(ndimage.uniform_filter(power, size=(1, 7, 7), mode="reflect"))
    contrast = lambda x: np.abs(x[:, :, 61].mean() - x[:, :, 58].mean())  # noqa: E731
    assert contrast(lee) > contrast(box)


def test_no_nan_for_constant_or_very_dark_images():
    for value in (-12.0, -60.0):
        image = np.full((2, 40, 40), value, dtype=np.float32)
        for name in ("median3", "lee5"):
            out = parse_speckle_filter(name).apply(image)
            assert np.isfinite(out).all()
            np.testing.assert_allclose(out, value, atol=1e-3)


def test_none_is_an_unchanged_copy():
    image = _speckled_step()
    out = parse_speckle_filter("none").apply(image)
    np.testing.assert_array_equal(out, image)
    assert out is not image


@pytest.mark.parametrize("text", ["median4", "lee", "gauss3", "median17", ""])
def test_bad_filter_names_state_the_rule(text):
    with pytest.raises(DataError, match="odd k in 3..15"):
        parse_speckle_filter(text)


def test_round_trip_of_names():
    assert [str(parse_speckle_filter(t)) for t in ("none", "median3", "lee5")] == ["none", "median3", "lee5"]
