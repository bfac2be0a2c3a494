"""A reBEN (v2) archive loads through the same dataset class with the same values."""

from __future__ import annotations

import torch

from mmvit.data.archive import V2Archive, open_archive
from mmvit.data.bigearthnet import BigEarthNetMM


def test_v2_layout_is_recognised(v2_root):
    assert isinstance(open_archive(v2_root), V2Archive)


def test_v2_values_equal_the_v1_source(v2_root, demo_root):
    v1 = BigEarthNetMM(demo_root, "validation")
    v2 = BigEarthNetMM(v2_root, "validation")
    assert v1.patch_names == v2.patch_names
    for index in range(len(v1)):
        a, b = v1[index], v2[index]
        for key in ("image_s2", "image_s1", "label"):
            assert torch.equal(a[key], b[key]), key


def test_v2_snow_flag_excludes_the_patch(v2_root, demo_root):
    v1_train = BigEarthNetMM(demo_root, "train").patch_names
    v2_train = BigEarthNetMM(v2_root, "train").patch_names
    assert v2_train == v1_train[1:]
    assert len(BigEarthNetMM(v2_root, "train", exclude=False)) == len(v1_train)


def test_v2_cache_equals_direct(v2_root, tmp_path):
    direct = BigEarthNetMM(v2_root, "test", "rgb+s1")
    cached = BigEarthNetMM(v2_root, "test", "rgb+s1", cache_dir=tmp_path, workers=1)
    assert torch.equal(direct[0]["image_s2"], cached[0]["image_s2"])
    assert torch.equal(direct[0]["image_s1"], cached[0]["image_s1"])
