"""Normalisation and augmentations: exact transforms, synchronisation, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmvit.data.transforms import (
    ChannelStats, ChannelStatsAccumulator, Compose, Normalise, RandomDihedral, RandomModalityDrop,
    RandomResizedCrop, build_transforms,
)
from mmvit.errors import DataError


def _sample(seed: int = 0) -> dict:
    """S1 is a copy of S2's first two channels, so a synchronised transform keeps them equal."""
    generator = torch.Generator().manual_seed(seed)
    s2 = torch.rand(10, 120, 120, generator=generator)
    return {"image_s2": s2, "image_s1": s2[:2].clone(), "label": torch.ones(19), "patch": "p"}


def _stats(array: np.ndarray) -> ChannelStats:
    accumulator = ChannelStatsAccumulator(array.shape[1])
    accumulator.update(array)
    return accumulator.result()


def _eight(image: torch.Tensor) -> list[torch.Tensor]:
    """The dihedral group built independently of the code under test: rotations, then a flip."""
    rotations = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    return rotations + [r.flip(-1) for r in rotations]


def _index(image: torch.Tensor, candidates: list[torch.Tensor]) -> int:
    return next(i for i, c in enumerate(candidates) if torch.equal(c, image))


def test_accumulator_merge_equals_one_shot_and_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal(5, 3, (6, 4, 8, 8))
    left, right = ChannelStatsAccumulator(4), ChannelStatsAccumulator(4)
    left.update(data[:2])
    for row in data[2:]:
        right.update(row)
    merged, one_shot = left.merge(right).result(), _stats(data)
    for field in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(getattr(merged, field), getattr(one_shot, field))
    np.testing.assert_allclose(merged.mean, data.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(merged.std, data.std(axis=(0, 2, 3)))
    np.testing.assert_array_equal(merged.min, data.min(axis=(0, 2, 3)))
    np.testing.assert_array_equal(merged.max, data.max(axis=(0, 2, 3)))
    restored = ChannelStats.from_dict(merged.to_dict())
    assert restored.max.tolist() == merged.max.tolist() and restored.select([2, 1, 0]).mean.tolist() == [
        merged.mean[2], merged.mean[1], merged.mean[0]]


def test_standardise_gives_zero_mean_unit_std_per_channel():
    rng = np.random.default_rng(1)
    scales = np.linspace(50, 2000, 10)[None, :, None, None]
    s2 = (rng.normal(0, 1, (8, 10, 16, 16)) * scales + 3 * scales).astype(np.float32)
    normalise = Normalise(_stats(s2), None, "standardise")
    batch = torch.stack([normalise({"image_s2": torch.from_numpy(x)})["image_s2"] for x in s2])
    assert batch.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (batch.std(dim=(0, 2, 3), correction=0) - 1).abs().max() < 1e-4


def test_s1_modes():
    rng = np.random.default_rng(2)
    s1 = rng.normal(-12, 4, (8, 2, 16, 16)).astype(np.float32)
    minmax = Normalise(None, _stats(s1), "minmax")
    whole = torch.stack([minmax({"image_s1": torch.from_numpy(x)})["image_s1"] for x in s1])
    assert whole.amin(dim=(0, 2, 3)).abs().max() < 1e-6 and (whole.amax(dim=(0, 2, 3)) - 1).abs().max() < 1e-6
    sample = {"image_s1": torch.from_numpy(s1[0])}
    assert torch.equal(Normalise(None, _stats(s1), "none")(sample)["image_s1"], sample["image_s1"])
    with pytest.raises(DataError, match="s1_normalisation must be one of.*'log'"):
        Normalise(None, None, "log")  # type: ignore[arg-type]


def test_normalise_leaves_input_and_other_keys_alone_and_checks_channels():
    sample = _sample()
    before = sample["image_s2"].clone()
    stats = _stats(np.random.default_rng(3).random((2, 10, 4, 4)))
    out = Normalise(stats, stats.select([0, 1]))(sample)
    assert torch.equal(sample["image_s2"], before) and out["label"] is sample["label"] and out["patch"] == "p"
    constant = ChannelStats(np.ones(2), np.zeros(2), np.ones(2), np.ones(2))
    assert torch.isfinite(Normalise(None, constant)({"image_s1": torch.rand(2, 4, 4)})["image_s1"]).all()
    with pytest.raises(DataError, match="image_s2 has 3 channels.*10"):
        Normalise(stats, None)({"image_s2": torch.rand(3, 8, 8)})


def test_dihedral_draws_all_eight_exact_transforms():
    s2 = _sample()["image_s2"][:, :8, :8].clone()  # small: the group does not depend on size
    sample = {"image_s2": s2, "image_s1": s2[:2].clone()}
    candidates = [c.contiguous() for c in _eight(sample["image_s2"])]
    assert len({tuple(c[0, :2, :2].flatten().tolist()) for c in candidates}) == 8
    torch.manual_seed(0)
    counts = [0] * 8
    for _ in range(800):
        out = RandomDihedral(synchronised=True)(sample)
        counts[_index(out["image_s2"], candidates)] += 1
        assert torch.equal(out["image_s1"], out["image_s2"][:2])
    assert min(counts) > 60  # uniform: 100 each expected


@pytest.mark.parametrize(
    "transform", [RandomDihedral, lambda synchronised: RandomResizedCrop(synchronised=synchronised)])
def test_desynchronised_draws_differ_and_synchronised_agree(transform):
    sample = _sample()
    torch.manual_seed(1)
    together = [transform(synchronised=True)(sample) for _ in range(20)]
    assert all(torch.equal(o["image_s1"], o["image_s2"][:2]) for o in together)
    apart = [transform(synchronised=False)(sample) for _ in range(20)]
    assert sum(not torch.equal(o["image_s1"], o["image_s2"][:2]) for o in apart) >= 10


def test_desynchronised_dihedral_is_exact_per_image():
    sample = _sample()
    s2_candidates, s1_candidates = _eight(sample["image_s2"]), _eight(sample["image_s1"])
    torch.manual_seed(4)
    pairs = set()
    for _ in range(200):
        out = RandomDihedral(synchronised=False)(sample)
        pairs.add((_index(out["image_s2"], s2_candidates), _index(out["image_s1"], s1_candidates)))
    assert len(pairs) > 40  # independent draws: 64 pairs possible


def test_crop_size_and_identity():
    sample = _sample()
    out = RandomResizedCrop(scale=(0.3, 0.5))(sample)
    assert out["image_s2"].shape == (10, 120, 120) and out["image_s1"].shape == (2, 120, 120)
    assert not torch.equal(out["image_s2"], sample["image_s2"])
    same = RandomResizedCrop(scale=(1, 1), ratio=(1, 1))(sample)
    assert all(torch.equal(same[k], sample[k]) for k in ("image_s2", "image_s1"))
    small = RandomResizedCrop(size=120)({"image_s1": torch.rand(2, 60, 60)})
    assert small["image_s1"].shape == (2, 120, 120)


def test_crop_keeps_values_in_range():
    """Bilinear resizing without antialiasing interpolates: no value leaves the input's range."""
    sample = _sample()
    torch.manual_seed(5)
    for _ in range(20):
        out = RandomResizedCrop()(sample)["image_s2"]
        assert out.min() >= sample["image_s2"].min() and out.max() <= sample["image_s2"].max()


def test_modality_drop():
    sample = _sample()
    torch.manual_seed(2)
    dropped = [RandomModalityDrop(1.0)(sample) for _ in range(50)]
    zeroed = [[k for k in ("image_s2", "image_s1") if not o[k].any()] for o in dropped]
    assert all(len(z) == 1 for z in zeroed) and {z[0] for z in zeroed} == {"image_s2", "image_s1"}
    assert all(RandomModalityDrop(0.0)(sample)["image_s2"] is sample["image_s2"] for _ in range(10))
    assert sample["image_s2"].any() and sample["image_s1"].any()
    single = {"image_s1": sample["image_s1"]}
    assert RandomModalityDrop(1.0)(single)["image_s1"].any()


def test_pipeline_steps_and_single_image_samples():
    stats = _stats(np.random.default_rng(3).random((2, 10, 4, 4)))
    evaluation = build_transforms(train=False, s2_stats=stats, s1_stats=stats.select([0, 1]))
    assert [type(t) for t in evaluation.transforms] == [Normalise]
    train = build_transforms(train=True, s2_stats=stats, s1_stats=stats.select([0, 1]), modality_drop=0.3)
    steps = [Normalise, RandomDihedral, RandomResizedCrop, RandomModalityDrop]
    assert [type(t) for t in train.transforms] == steps
    bare = build_transforms(train=True, s2_stats=stats, s1_stats=None, flip=False, crop=False)
    assert [type(t) for t in bare.transforms] == [Normalise] and isinstance(bare, Compose)
    rgb = build_transforms(train=True, s2_stats=stats.select([2, 1, 0]), s1_stats=None, modality_drop=1.0)
    out = rgb({"image_s2": torch.rand(3, 120, 120), "label": torch.zeros(19)})
    assert out["image_s2"].shape == (3, 120, 120) and set(out) == {"image_s2", "label"}


def test_pipelines_deterministic_and_reproducible():
    stats = _stats(np.random.default_rng(3).random((2, 10, 4, 4)))
    s1_stats = stats.select([0, 1])
    evaluation = build_transforms(train=False, s2_stats=stats, s1_stats=s1_stats)
    assert torch.equal(evaluation(_sample())["image_s2"], evaluation(_sample())["image_s2"])
    train = build_transforms(train=True, s2_stats=stats, s1_stats=s1_stats, synchronised=False,
                             modality_drop=0.5)
    torch.manual_seed(7)
    first = train(_sample())
    torch.manual_seed(7)
    second = train(_sample())
    assert all(torch.equal(first[k], second[k]) for k in ("image_s2", "image_s1"))
    third = train(_sample())
    assert not torch.equal(first["image_s2"], third["image_s2"])
    assert torch.equal(first["label"], torch.ones(19)) and first["patch"] == "p"
