"""Bad input gets a message that names the root, the patch and the file."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import rasterio

from mmvit.data.bigearthnet import BigEarthNetMM
from mmvit.errors import DataError


@pytest.fixture
def broken_root(tmp_path, demo_root):
    """A private copy of the demo archive that a test may damage."""
    root = tmp_path / "archive"
    shutil.copytree(demo_root, root)
    return root


def _first(root, split="train"):
    dataset = BigEarthNetMM(root, split)
    return dataset, dataset.refs[0]


def test_missing_root_names_root_and_both_layouts(tmp_path):
    with pytest.raises(DataError) as error:
        BigEarthNetMM(tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message
    assert "BigEarthNet-v1.0" in message and "metadata.parquet" in message


def test_folder_that_is_not_an_archive(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataError) as error:
        BigEarthNetMM(tmp_path)
    assert str(tmp_path) in str(error.value) and "photos" in str(error.value)


def test_missing_band_file_names_patch_and_file(broken_root):
    dataset, ref = _first(broken_root)
    band = ref.s2_dir / f"{ref.patch}_B8A.tif"
    band.unlink()
    with pytest.raises(DataError) as error:
        dataset[0]
    assert ref.patch in str(error.value) and str(band) in str(error.value)


def test_unreadable_band_file_names_patch_and_file(broken_root):
    dataset, ref = _first(broken_root)
    band = ref.s1_dir / f"{ref.s1_patch}_VH.tif"
    band.write_bytes(b"not a tiff")
    with pytest.raises(DataError) as error:
        dataset[0]
    assert ref.patch in str(error.value) and str(band) in str(error.value)


def _rewrite(path, array, dtype):
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(width=array.shape[1], height=array.shape[0], dtype=dtype)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array.astype(dtype), 1)


def test_wrong_size_names_the_patch(broken_root):
    dataset, ref = _first(broken_root)
    _rewrite(ref.s2_dir / f"{ref.patch}_B02.tif", np.zeros((60, 60)), "uint16")
    with pytest.raises(DataError, match=ref.patch) as error:
        dataset[0]
    assert "120×120" in str(error.value)


def test_wrong_dtype_names_the_patch(broken_root):
    dataset, ref = _first(broken_root)
    _rewrite(ref.s1_dir / f"{ref.s1_patch}_VV.tif", np.zeros((120, 120)), "int16")
    with pytest.raises(DataError, match=ref.patch) as error:
        dataset[0]
    assert "float32" in str(error.value)


def test_skip_unreadable_logs_count_and_names(broken_root, caplog):
    dataset, ref = _first(broken_root)
    (ref.s2_dir / f"{ref.patch}_B03.tif").unlink()
    dataset = BigEarthNetMM(broken_root, "train", skip_unreadable=True)
    with caplog.at_level(logging.WARNING):
        sample = dataset[0]
    assert sample["patch"] == dataset.refs[1].patch
    assert dataset.skipped == [ref.patch]
    assert ref.patch in caplog.text and "1 so far" in caplog.text


def test_cache_skip_unreadable_leaves_patch_out_and_records_it(broken_root, tmp_path, caplog):
    dataset, ref = _first(broken_root)
    (ref.s1_dir / f"{ref.s1_patch}_VV.tif").unlink()
    with pytest.raises(DataError, match=ref.patch):
        BigEarthNetMM(broken_root, "train", cache_dir=tmp_path / "cache", workers=1)
    with caplog.at_level(logging.WARNING):
        cached = BigEarthNetMM(broken_root, "train", cache_dir=tmp_path / "cache", workers=1,
                               skip_unreadable=True)
    assert len(cached) == len(dataset) - 1 and ref.patch not in cached.patch_names
    assert cached.skipped == [ref.patch]
    assert "Skipped 1 unreadable patch" in caplog.text and ref.patch in caplog.text


def test_unknown_modality():
    with pytest.raises(DataError, match="modalities must be one of"):
        BigEarthNetMM("unused", modalities="s3")


def test_unknown_split(demo_root):
    with pytest.raises(DataError, match="split must be one of"):
        BigEarthNetMM(demo_root, split="holdout")


def test_unknown_resampling(demo_root):
    with pytest.raises(DataError, match="resampling must be one of"):
        BigEarthNetMM(demo_root, resampling="fancy")
