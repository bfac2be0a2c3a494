"""The cache returns exactly what the direct path returns, and never looks complete early."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmvit.data import cache as cache_module
from mmvit.data.archive import open_archive
from mmvit.data.bigearthnet import BigEarthNetMM
from mmvit.data.cache import SplitCache, s1_component, s2_component


def _assert_same(a: BigEarthNetMM, b: BigEarthNetMM) -> None:
    assert len(a) == len(b) and a.patch_names == b.patch_names
    for index in range(len(a)):
        x, y = a[index], b[index]
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key]


@pytest.mark.parametrize("modalities, speckle", [("s2+s1", "none"), ("rgb+s1", "median3"), ("s1", "lee5")])
def test_cache_equals_direct_path(demo_root, tmp_path, modalities, speckle):
    kwargs = dict(modalities=modalities, speckle_filter=speckle)
    direct = BigEarthNetMM(demo_root, "validation", **kwargs)
    cached = BigEarthNetMM(demo_root, "validation", cache_dir=tmp_path, workers=1, **kwargs)
    _assert_same(direct, cached)


def test_parallel_conversion_equals_serial(demo_root, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "CHUNK", 4)
    serial = BigEarthNetMM(demo_root, "train", cache_dir=tmp_path / "a", workers=1)
    parallel = BigEarthNetMM(demo_root, "train", cache_dir=tmp_path / "b", workers=2)
    _assert_same(serial, parallel)


def test_stats_are_those_of_the_cached_split(demo_root, tmp_path):
    dataset = BigEarthNetMM(demo_root, "train", cache_dir=tmp_path, workers=1)
    s2 = np.stack([dataset[i]["image_s2"].numpy() for i in range(len(dataset))]).astype(np.float64)
    s1 = np.stack([dataset[i]["image_s1"].numpy() for i in range(len(dataset))]).astype(np.float64)
    stats = dataset.stats()
    np.testing.assert_allclose(stats["s2"].mean, s2.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(stats["s2"].std, s2.std(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(stats["s1"].min, s1.min(axis=(0, 2, 3)))
    np.testing.assert_allclose(stats["s1"].max, s1.max(axis=(0, 2, 3)))
    rgb = BigEarthNetMM(demo_root, "train", "rgb", cache_dir=tmp_path, workers=1).stats()["s2"]
    np.testing.assert_array_equal(rgb.mean, stats["s2"].mean[[2, 1, 0]])


def test_components_are_keyed_and_shared(demo_root, tmp_path):
    BigEarthNetMM(demo_root, "test", cache_dir=tmp_path, workers=1)
    split_cache = SplitCache(open_archive(demo_root), "test", tmp_path)
    s2_file = split_cache.dir / f"{s2_component('bilinear').name}.npy"
    before = s2_file.stat().st_mtime_ns
    BigEarthNetMM(demo_root, "test", speckle_filter="median5", cache_dir=tmp_path, workers=1)
    assert s2_file.stat().st_mtime_ns == before, "a new speckle filter must not rewrite S2"
    assert split_cache.is_complete(s1_component("median5", "float32"))
    assert split_cache.is_complete(s1_component("none", "float32"))
    assert not split_cache.is_complete(s2_component("nearest"))


def test_interrupted_conversion_never_looks_complete(demo_root, tmp_path, monkeypatch):
    archive = open_archive(demo_root)
    split_cache = SplitCache(archive, "train", tmp_path)
    calls = {"n": 0}
    original = cache_module.PatchReader.__call__

    def dying_reader(self, ref):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, ref)

    monkeypatch.setattr(cache_module.PatchReader, "__call__", dying_reader)
    with pytest.raises(KeyboardInterrupt):
        BigEarthNetMM(demo_root, "train", cache_dir=tmp_path, workers=1)
    component = s2_component("bilinear")
    assert not split_cache.is_complete(component)
    assert not (split_cache.dir / f"{component.name}.json").exists()
    assert not (split_cache.dir / f"{component.name}.npy").exists()
    monkeypatch.setattr(cache_module.PatchReader, "__call__", original)
    _assert_same(BigEarthNetMM(demo_root, "train"),
                 BigEarthNetMM(demo_root, "train", cache_dir=tmp_path, workers=1))
    meta = json.loads((split_cache.dir / f"{component.name}.json").read_text())
    assert meta["valid"] == len(split_cache) and meta["skipped"] == []


def test_float16_s1_is_close_to_float32(demo_root, tmp_path):
    full = BigEarthNetMM(demo_root, "test", "s1", cache_dir=tmp_path, workers=1)
    half = BigEarthNetMM(demo_root, "test", "s1", cache_dir=tmp_path, workers=1, s1_dtype="float16")
    np.testing.assert_allclose(half[0]["image_s1"].numpy(), full[0]["image_s1"].numpy(), atol=0.02)
