"""The batch data path (:mod:`mmvit.data.batch_augment`, :mod:`mmvit.data.loader`) against the
per-sample reference (:mod:`mmvit.data.transforms`, :class:`BigEarthNetMM`): exact resampling,
torchvision's crop distribution, the draws of a batch, and the loader on the demo archive."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torchvision.transforms import RandomResizedCrop as TorchvisionCrop
from torchvision.transforms.v2 import functional as F

from mmvit.config import trial_config
from mmvit.data.batch_augment import (
    AugmentOptions, draw_batch, draw_boxes, make_tables, normalise_batch, resample_batch, resample_torch,
)
from mmvit.data.bigearthnet import BigEarthNetMM
from mmvit.data.loader import BatchLoader, build_datasets, split_arrays
from mmvit.data.transforms import _dihedral, build_transforms, channel_affine

SIZE = 120
CPU = torch.device("cpu")
RESAMPLERS = {"torch": resample_torch, "numba": resample_batch}


# --------------------------------------------------------------------------- resampling


def _affine(channels: int, generator: torch.Generator, centre: float, spread: float):
    shift = centre + spread * (torch.rand(channels, generator=generator) - 0.5)
    scale = 1.0 / (spread * (0.2 + torch.rand(channels, generator=generator)))
    return shift, scale


def _source(kind: str, count: int, generator: torch.Generator):
    """S2-like uint16 reflectance (0..10000, 10 bands) or S1-like dB (2 bands), with an affine
    of the right magnitude (standardisation-like)."""
    if kind == "s2":
        images = torch.randint(0, 10001, (count, 10, SIZE, SIZE), generator=generator).to(torch.uint16)
        return images, *_affine(10, generator, 3000.0, 2000.0)
    dtype = {"s1-float32": torch.float32, "s1-float16": torch.float16}[kind]
    images = (torch.randn(count, 2, SIZE, SIZE, generator=generator) * 4 - 15).to(dtype)
    return images, *_affine(2, generator, -15.0, 4.0)


def _reference(source, dihedral, boxes, keep, shift, scale) -> torch.Tensor:
    """The per-sample semantics: normalise, dihedral element, torchvision's resized crop
    (bilinear, no antialiasing), zeros where dropped."""
    out = []
    for b in range(len(source)):
        x = (source[b].float() - shift.view(-1, 1, 1)) * scale.view(-1, 1, 1)
        x = _dihedral(x, int(dihedral[b]))
        top, left, height, width = (int(v) for v in boxes[b])
        x = F.resized_crop(x, top, left, height, width, [SIZE, SIZE], antialias=False)
        out.append(x if keep[b] else torch.zeros_like(x))
    return torch.stack(out)


def _assert_float32_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # Both sides compute the bilinear source coordinate (up to ~120) in float32, so a weight can
    # differ by an ulp of 120 (7.6e-6) times a neighbour difference (≤ 2·max|x|), plus a few ulps
    # of the values: 1e-4·max|x| leaves a margin of ~5 while any wrong index or weight errs by
    # O(max|x|) on random images.
    tolerance = 1e-4 * float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=0, atol=tolerance)


# Edge boxes besides the random ones: one pixel, one row or column at the far borders, a thin
# strip, the whole image.
EDGE_BOXES = [[0, 0, 1, 1], [119, 0, 1, 120], [0, 119, 120, 1], [117, 3, 3, 40], [0, 0, 120, 120]]


@pytest.mark.parametrize("resampler", ["torch", "numba"])
@pytest.mark.parametrize("kind", ["s2", "s1-float32", "s1-float16"])
def test_resampling_equals_the_per_sample_transforms(kind, resampler):
    generator = torch.Generator().manual_seed({"s2": 1, "s1-float32": 2, "s1-float16": 3}[kind])
    count = 12
    source, shift, scale = _source(kind, count, generator)
    random = count - len(EDGE_BOXES)
    boxes = torch.cat([draw_boxes(random // 2, generator, (0.5, 1.0), (3 / 4, 4 / 3)),
                       draw_boxes(random - random // 2, generator, (0.05, 0.3), (1 / 3, 3.0)),
                       torch.tensor(EDGE_BOXES)])
    dihedral = torch.randint(8, (count,), generator=generator)
    keep = torch.rand(count, generator=generator) < 0.7
    keep[:2] = torch.tensor([True, False])
    expected = _reference(source, dihedral, boxes, keep, shift, scale)

    out = torch.full((count, source.shape[1], SIZE, SIZE), float("nan"))  # a reused, stale buffer
    actual = RESAMPLERS[resampler](source, make_tables(dihedral, boxes), keep, shift, scale, out=out)

    assert actual.data_ptr() == out.data_ptr() and actual.dtype == torch.float32
    _assert_float32_close(actual, expected)
    assert torch.equal(actual[~keep], torch.zeros_like(actual[~keep]))  # dropped: exactly zero
    assert (actual[keep].flatten(1).abs().amax(1) > 0).all()


@pytest.mark.parametrize("augment", [True, False])
@pytest.mark.parametrize("kind", ["s2", "s1-float32", "s1-float16"])
def test_rows_and_channels_read_in_place_equal_the_gathered_batch(kind, augment):
    # The CPU kernels read a batch's rows straight from the (memory-mapped) cache; the rows of
    # a batch are sorted but not contiguous, and RGB takes channels out of order.
    generator = torch.Generator().manual_seed(11)
    cache, shift, scale = _source(kind, 9, generator)
    rows = torch.tensor([0, 2, 3, 7, 8])
    channels = torch.tensor([2, 1, 0]) if cache.shape[1] > 2 else torch.tensor([1, 0])
    shift, scale = shift[channels], scale[channels]
    gathered = cache[rows][:, channels].contiguous()
    if augment:
        tables = make_tables(torch.randint(8, (5,), generator=generator),
                             draw_boxes(5, generator, (0.5, 1.0), (3 / 4, 4 / 3)))
        keep = torch.tensor([True, True, False, True, True])
        expected = resample_torch(gathered, tables, keep, shift, scale)
        actual = resample_batch(cache, tables, keep, shift, scale, index=rows, channels=channels)
    else:
        expected = (gathered.float() - shift.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
        actual = normalise_batch(cache, shift, scale, index=rows, channels=channels)
    assert actual.shape == (5, len(channels), SIZE, SIZE)
    _assert_float32_close(actual, expected)


def _eight(image: torch.Tensor) -> list[torch.Tensor]:
    """The dihedral group built independently: i quarter turns, then a left-right flip if i ≥ 4."""
    rotations = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    return rotations + [r.flip(-1) for r in rotations]


@pytest.mark.parametrize("resampler", ["torch", "numba"])
def test_every_dihedral_element_with_the_whole_box_is_exact(resampler):
    generator = torch.Generator().manual_seed(8)
    source, shift, scale = _source("s2", 1, generator)
    source = source.expand(8, -1, -1, -1).contiguous()
    dihedral = torch.arange(8)
    boxes = torch.tensor([[0, 0, SIZE, SIZE]]).expand(8, 4)
    normalised = (source[0].float() - shift.view(-1, 1, 1)) * scale.view(-1, 1, 1)
    expected = torch.stack(_eight(normalised))
    assert torch.equal(torch.stack([_dihedral(normalised, i) for i in range(8)]), expected)

    tables = make_tables(dihedral, boxes)
    assert (tables.row_weight == 0).all() and (tables.col_weight == 0).all()
    actual = RESAMPLERS[resampler](source, tables, torch.ones(8, dtype=torch.bool), shift, scale)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    # the eight are distinct, so a permuted or repeated element would fail
    assert len({hash(x.numpy().tobytes()) for x in expected}) == 8


# --------------------------------------------------------------------------- crop boxes


def _torchvision_boxes(count: int, scale, ratio, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    image = torch.empty(1, SIZE, SIZE)
    return torch.tensor([TorchvisionCrop.get_params(image, list(scale), list(ratio)) for _ in range(count)])


def _assert_same_mean(a: torch.Tensor, b: torch.Tensor, what: str, limit: float = 5.0) -> None:
    a, b = a.double(), b.double()
    error = math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))
    z = abs(a.mean().item() - b.mean().item()) / error
    assert z < limit, f"{what}: means {a.mean().item():.4f} vs {b.mean().item():.4f} ({z:.1f} standard errors)"


def _assert_inside(boxes: torch.Tensor) -> None:
    top, left, height, width = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (height >= 1).all() and (width >= 1).all()
    assert (top + height <= SIZE).all() and (left + width <= SIZE).all()


@pytest.mark.parametrize(("scale", "count"), [((0.5, 1.0), 12_000), ((0.9, 1.0), 5_000)])
def test_draw_boxes_has_torchvisions_distribution(scale, count):
    """(0.9, 1.0) fails often (about 10 % of boxes fall back to the whole image), so it checks
    the first-that-fits choice and the fallback; (0.5, 1.0) is the thesis's range."""
    ratio = (3 / 4, 4 / 3)
    with torch.random.fork_rng():
        expected = _torchvision_boxes(count, scale, ratio, seed=11)
    ours = draw_boxes(count, torch.Generator().manual_seed(12), scale, ratio)
    assert ours.shape == (count, 4) and ours.dtype == torch.int64
    _assert_inside(ours)
    for name, column in (("top", 0), ("left", 1), ("height", 2), ("width", 3)):
        _assert_same_mean(ours[:, column], expected[:, column], name)
    _assert_same_mean(ours[:, 2] * ours[:, 3] / SIZE**2, expected[:, 2] * expected[:, 3] / SIZE**2, "area")
    _assert_same_mean(ours[:, 3] / ours[:, 2], expected[:, 3] / expected[:, 2], "aspect")
    whole = (ours[:, 2:] == SIZE).all(1).double()
    _assert_same_mean(whole, (expected[:, 2:] == SIZE).all(1).double(), "whole-image fraction")
    # the drawn values stay within the distribution's support (up to rounding to whole pixels:
    # at least 60 px a side, so < 2 % on the area and < 2.5 % on the aspect)
    area = ours[:, 2] * ours[:, 3] / SIZE**2
    aspect = ours[:, 3] / ours[:, 2]
    fitted = ~(ours[:, 2:] == SIZE).all(1)
    assert area[fitted].min() > scale[0] - 0.02 and area.max() <= 1.0
    assert aspect[fitted].min() > ratio[0] - 0.03 and aspect[fitted].max() < ratio[1] + 0.03
    if scale == (0.5, 1.0):
        assert area.std() > 0.1 and aspect.std() > 0.1  # a real spread, not one box


def test_boxes_that_never_fit_fall_back_to_the_whole_image():
    # area ≥ 1.5 × the image: no try can fit; the image's ratio (1) is inside the range, so
    # torchvision takes the whole image
    scale, ratio = (1.5, 2.0), (3 / 4, 4 / 3)
    expected = _torchvision_boxes(50, scale, ratio, seed=0)
    assert (expected == torch.tensor([0, 0, SIZE, SIZE])).all()
    ours = draw_boxes(50, torch.Generator().manual_seed(0), scale, ratio)
    assert torch.equal(ours, expected)


def test_fallback_outside_the_ratio_range_is_torchvisions_central_crop():
    scale, ratio = (1.0, 1.0), (2.0, 3.0)  # a box of the whole area is never 2..3 times wider than tall
    expected = _torchvision_boxes(20, scale, ratio, seed=0)
    assert (expected == torch.tensor([30, 0, 60, SIZE])).all()  # torchvision: h = round(120 / 2), centred
    ours = draw_boxes(20, torch.Generator().manual_seed(0), scale, ratio)
    assert torch.equal(ours, expected)


# --------------------------------------------------------------------------- draws of a batch


def _dihedral_of(tables) -> torch.Tensor:
    """The dihedral element behind identity-crop tables: (transpose, rows reversed, columns reversed)."""
    rows_flipped = tables.rows0[:, 0] == SIZE - 1
    cols_flipped = tables.cols0[:, 0] == SIZE - 1
    return tables.transpose.long() * 4 + rows_flipped.long() * 2 + cols_flipped.long()


def _tables_equal(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)


def test_synchronised_draws_share_tables_and_desynchronised_do_not():
    keys = ["s2", "s1"]
    synced = draw_batch(64, keys, AugmentOptions(synchronised=True), torch.Generator().manual_seed(1))
    assert _tables_equal(synced.tables["s2"], synced.tables["s1"])
    apart = draw_batch(64, keys, AugmentOptions(synchronised=False), torch.Generator().manual_seed(1))
    a, b = apart.tables["s2"], apart.tables["s1"]
    # per sample: the two images differ in at least 3/4 of the samples (equal boxes and element
    # are rare); all 64 the same would be astronomically unlikely
    same = ((a.rows0 == b.rows0).all(1) & (a.cols0 == b.cols0).all(1) & (a.transpose == b.transpose)
            & (a.row_weight == b.row_weight).all(1) & (a.col_weight == b.col_weight).all(1))
    assert same.sum() < 16


def test_without_flip_and_crop_the_tables_are_the_identity():
    draws = draw_batch(32, ["s2", "s1"], AugmentOptions(flip=False, crop=False, modality_drop=0.0),
                       torch.Generator().manual_seed(2))
    identity = torch.arange(SIZE).expand(32, SIZE)
    for key, tables in draws.tables.items():
        assert torch.equal(tables.rows0, identity) and torch.equal(tables.cols0, identity), key
        assert (tables.row_weight == 0).all() and (tables.col_weight == 0).all()
        assert not tables.transpose.any()
        assert draws.keep[key].all()
    # flip only: no crop weights, rows and columns still whole (possibly reversed)
    flips = draw_batch(256, ["s2"], AugmentOptions(flip=True, crop=False), torch.Generator().manual_seed(3))
    tables = flips.tables["s2"]
    assert (tables.row_weight == 0).all() and (tables.col_weight == 0).all()
    assert torch.equal(tables.rows0.sort(1).values, identity[:1].expand(256, SIZE))
    # crop only: no element changes orientation, every box is inside the image
    crops = draw_batch(256, ["s2"], AugmentOptions(flip=False, crop=True), torch.Generator().manual_seed(3))
    tables = crops.tables["s2"]
    assert not tables.transpose.any()
    assert (tables.rows0.diff(dim=1) >= 0).all() and (tables.cols0.diff(dim=1) >= 0).all()
    assert (tables.row_weight > 0).any() and (tables.rows1 <= SIZE - 1).all()


def test_dihedral_elements_are_uniform():
    count = 16_000
    draws = draw_batch(count, ["s2"], AugmentOptions(flip=True, crop=False), torch.Generator().manual_seed(4))
    elements = _dihedral_of(draws.tables["s2"])
    observed = torch.bincount(elements, minlength=8).double()
    assert len(observed) == 8
    expected = count / 8
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 24.3, observed  # chi-square, 7 degrees of freedom: P(> 24.3) = 0.001


def test_modality_drop_rate_and_never_both():
    count, p = 4_000, 0.5
    options = AugmentOptions(flip=False, crop=False, modality_drop=p)
    draws = draw_batch(count, ["s2", "s1"], options, torch.Generator().manual_seed(5))
    dropped_s2, dropped_s1 = ~draws.keep["s2"], ~draws.keep["s1"]
    assert not (dropped_s2 & dropped_s1).any()
    drops = (dropped_s2 | dropped_s1).double()
    error = math.sqrt(p * (1 - p) / count)
    assert abs(drops.mean().item() - p) < 5 * error
    share = dropped_s2.sum().item() / drops.sum().item()
    assert abs(share - 0.5) < 5 * math.sqrt(0.25 / drops.sum().item())
    # one image only: never dropped, whatever p; p = 0: nothing dropped
    single = draw_batch(1000, ["s1"], AugmentOptions(modality_drop=0.9), torch.Generator().manual_seed(5))
    assert single.keep["s1"].all()
    none = draw_batch(1000, ["s2", "s1"], AugmentOptions(modality_drop=0.0), torch.Generator().manual_seed(5))
    assert none.keep["s2"].all() and none.keep["s1"].all()


def test_same_seed_same_draws():
    options = AugmentOptions(synchronised=False, modality_drop=0.3)
    a = draw_batch(64, ["s2", "s1"], options, torch.Generator().manual_seed(6))
    b = draw_batch(64, ["s2", "s1"], options, torch.Generator().manual_seed(6))
    c = draw_batch(64, ["s2", "s1"], options, torch.Generator().manual_seed(7))
    for key in ("s2", "s1"):
        assert _tables_equal(a.tables[key], b.tables[key]) and torch.equal(a.keep[key], b.keep[key])
        assert not _tables_equal(a.tables[key], c.tables[key])


# --------------------------------------------------------------------------- the loader on the demo archive


@pytest.fixture(scope="module")
def demo(demo_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("batch-path-cache")
    for split in ("train", "validation", "test"):  # cached in-process: no pool of spawned workers
        BigEarthNetMM(demo_root, split, cache_dir=cache, workers=0)
    data = build_datasets(trial_config({"data": {"root": str(demo_root), "cache_dir": str(cache)}}))
    train = BigEarthNetMM(demo_root, "train", cache_dir=cache)
    return SimpleNamespace(root=demo_root, cache=cache, data=data, stats=train.stats(), size=len(train))


def _per_sample(demo, transforms, modalities: str = "s2+s1") -> BigEarthNetMM:
    return BigEarthNetMM(demo.root, "train", modalities, transforms, cache_dir=demo.cache)


def _stack(dataset) -> dict[str, torch.Tensor]:
    samples = [dataset[i] for i in range(len(dataset))]
    keys = [k for k in ("image_s2", "image_s1", "label") if k in samples[0]]
    return {k.removeprefix("image_"): torch.stack([s[k] for s in samples]) for k in keys}


def _epoch(loader: BatchLoader, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Every batch of one epoch, cloned (CPU batches reuse their buffers)."""
    return [{k: v.clone() for k, v in batch.items()} for batch in loader.batches(seed)]


def _cat(batches) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def _loader(demo, split=None, **kwargs) -> BatchLoader:
    kwargs.setdefault("batch_size", 7)
    kwargs.setdefault("device", CPU)
    return BatchLoader(split if split is not None else demo.data.train,
                       normalisation=demo.data.normalisation, **kwargs)


def _evaluation_reference(demo, modalities: str = "s2+s1"):
    stats = _per_sample(demo, None, modalities).stats()
    return _stack(_per_sample(demo, build_transforms(train=False, s2_stats=stats.get("s2"),
                                                     s1_stats=stats.get("s1")), modalities))


def _sample_keys(images: dict[str, torch.Tensor]) -> list[bytes]:
    return [b"".join(images[k][i].numpy().tobytes() for k in ("s2", "s1", "label"))
            for i in range(len(images["label"]))]


def test_unshuffled_batches_are_the_per_sample_dataset_in_order(demo):
    reference = _evaluation_reference(demo)
    loader = _loader(demo, shuffle=False)
    assert demo.size == 20 and len(loader) == 3  # 7 + 7 + 6: a short last batch
    batches = _epoch(loader)
    assert [len(b["label"]) for b in batches] == [7, 7, 6]
    for batch in batches:
        assert batch["s2"].dtype == batch["s1"].dtype == torch.float32
        assert batch["s2"].shape[1:] == (10, SIZE, SIZE) and batch["s1"].shape[1:] == (2, SIZE, SIZE)
        assert batch["label"].dtype == torch.float32 and batch["label"].shape[1] == 19
    epoch = _cat(batches)
    assert torch.equal(epoch["label"], reference["label"])
    for key in ("s2", "s1"):
        torch.testing.assert_close(epoch[key], reference[key], rtol=1e-6, atol=1e-6)
        # standardised with the training split's statistics: about zero mean, unit std per channel
        assert epoch[key].mean((0, 2, 3)).abs().max() < 1e-3
        assert (epoch[key].std((0, 2, 3)) - 1).abs().max() < 1e-2
    # identity augmentation (no flip, crop or drop) goes through the resampler and gives the same
    identity = _cat(_epoch(_loader(demo, augment=AugmentOptions(flip=False, crop=False))))
    for key in ("s2", "s1"):
        _assert_float32_close(identity[key], reference[key])


def test_shuffled_epochs_hold_every_sample_once(demo):
    ordered = _cat(_epoch(_loader(demo, shuffle=False)))
    position = {key: i for i, key in enumerate(_sample_keys(ordered))}
    assert len(position) == demo.size  # the demo's samples are distinct

    def order(seed, **kwargs):
        epoch = _cat(_epoch(_loader(demo, shuffle=True, **kwargs), seed))
        return [position[key] for key in _sample_keys(epoch)]  # KeyError: a sample not in the split

    first = order(1)
    assert sorted(first) == list(range(demo.size))
    assert first != list(range(demo.size))
    assert order(1) == first
    assert order(1, prefetch=False) == first
    second = order(2)
    assert sorted(second) == list(range(demo.size)) and second != first


def test_prefetch_and_seed_reproduce_augmented_batches(demo):
    options = AugmentOptions(flip=True, crop=True, synchronised=False, modality_drop=0.5)
    a = _epoch(_loader(demo, augment=options, shuffle=True, prefetch=True), seed=3)
    b = _epoch(_loader(demo, augment=options, shuffle=True, prefetch=False), seed=3)
    c = _epoch(_loader(demo, augment=options, shuffle=True, prefetch=True), seed=4)
    assert len(a) == len(b) == len(c) == 3
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert any(not torch.equal(x["s2"], z["s2"]) for x, z in zip(a, c))


def test_augmented_batches_are_the_batch_draws_applied_to_their_samples(demo):
    """Unshuffled, the epoch's generator draws only the augmentations, batch after batch, in
    the documented order; applying those draws to the raw samples gives the loader's batches
    (each sample gets its own tables, each image its own, S1 its own keep mask)."""
    options = AugmentOptions(flip=True, crop=True, synchronised=False, modality_drop=0.5)
    raw = _stack(_per_sample(demo, None))
    loader = _loader(demo, augment=options, batch_size=8)
    generator = torch.Generator().manual_seed(5)
    dropped = {"s2": 0, "s1": 0}
    for start, batch in zip(range(0, demo.size, 8), loader.batches(5)):
        count = len(batch["label"])
        draws = draw_batch(count, ["s2", "s1"], options, generator)
        assert torch.equal(batch["label"], raw["label"][start:start + count])
        for key in ("s2", "s1"):
            shift, scale = demo.data.normalisation[key]
            expected = resample_torch(raw[key][start:start + count], draws.tables[key], draws.keep[key],
                                      shift, scale)
            _assert_float32_close(batch[key], expected)
            dropped[key] += int((~draws.keep[key]).sum())
    assert dropped["s2"] + dropped["s1"] > 0  # the comparison covered dropped images too


def _epoch_statistics(images: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per image: the fraction of dropped (all-zero) samples, then per channel over the kept
    samples (a real patch is never all zero) the mean, the std and the mean absolute difference
    of neighbouring pixels (dihedral-invariant: rows and columns averaged). Flips leave all of
    them unchanged; crops resized back to 120 px smooth the pixel noise, which the last one
    measures (missing crops, or a crop scale of (0.9, 1) instead of (0.5, 1), move it by more
    than 10 standard errors on the demo archive)."""
    values = []
    for key in ("s2", "s1"):
        x = images[key]
        dropped = (x == 0).flatten(1).all(1)
        kept = x[~dropped]
        roughness = (kept.diff(dim=-1).abs().mean((0, 2, 3)) + kept.diff(dim=-2).abs().mean((0, 2, 3))) / 2
        values += [dropped.float().mean().view(1), kept.mean((0, 2, 3)), kept.std((0, 2, 3)), roughness]
    return torch.cat(values)


def test_augmented_epochs_match_the_per_sample_augmentations_statistically(demo):
    """The two paths draw independently, so only their distributions can agree.

    Each epoch's statistics (:func:`_epoch_statistics`: 38 numbers) are i.i.d. across epochs
    within a path (fixed data, fresh draws), and if the two paths agree in distribution they
    have the same variance in both. So this is a two-sample t-test per statistic with the
    pooled variance over epochs: 4 per-sample epochs (slow: a Python call per transform) and 12
    batch epochs give 14 degrees of freedom, P(|t| > 5) ≈ 2e-4 per statistic, < 1 % for all 38.
    The seeds are fixed, so the outcome is deterministic; the bound says that passing is no
    accident and that a failure is a real difference, not noise."""
    options = AugmentOptions(flip=True, crop=True, synchronised=False, modality_drop=0.5)
    loader = _loader(demo, augment=options, shuffle=True, batch_size=10)
    ours = torch.stack([_epoch_statistics(_cat(_epoch(loader, seed))) for seed in range(12)])
    transforms = build_transforms(train=True, s2_stats=demo.stats["s2"], s1_stats=demo.stats["s1"],
                                  synchronised=False, modality_drop=0.5)
    dataset = _per_sample(demo, transforms)
    reference = []
    with torch.random.fork_rng():
        for epoch in range(4):
            torch.manual_seed(1000 + epoch)
            reference.append(_epoch_statistics(_stack(dataset)))
    reference = torch.stack(reference)

    a, b = len(ours), len(reference)
    pooled = ((a - 1) * ours.var(0) + (b - 1) * reference.var(0)) / (a + b - 2)
    error = (pooled * (1 / a + 1 / b)).sqrt()
    assert (error > 0).all()
    t = (ours.mean(0) - reference.mean(0)).abs() / error
    assert t.max() < 5, f"statistic {int(t.argmax())} differs by {t.max():.1f} standard errors"
    # and the drop itself happened: about p / 2 = 25 % of each modality (s1's drop fraction is
    # statistic 1 + 3 × 10)
    drop_s2, drop_s1 = ours[:, 0].mean().item(), ours[:, 31].mean().item()
    assert 0.15 < drop_s2 < 0.35 and 0.15 < drop_s1 < 0.35


def test_rgb_batches_are_the_rgb_channels(demo):
    data = build_datasets(trial_config({"data": {"root": str(demo.root), "cache_dir": str(demo.cache),
                                                 "modalities": "rgb+s1"}}))
    assert data.in_chans == {"s2": 3, "s1": 2} and data.train.s2_channels == [2, 1, 0]
    reference = _evaluation_reference(demo, "rgb+s1")
    loader = BatchLoader(data.train, batch_size=7, device=CPU, normalisation=data.normalisation)
    epoch = _cat(_epoch(loader))
    assert epoch["s2"].shape == (demo.size, 3, SIZE, SIZE)
    torch.testing.assert_close(epoch["s2"], reference["s2"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(epoch["s1"], reference["s1"], rtol=1e-6, atol=1e-6)
    assert torch.equal(epoch["label"], reference["label"])
    # augmented: the same seed draws the same augmentations, so RGB is B04 B03 B02 of the S2 batch
    options = AugmentOptions(flip=True, crop=True, synchronised=False, modality_drop=0.5)
    rgb = _cat(_epoch(BatchLoader(data.train, batch_size=7, device=CPU, normalisation=data.normalisation,
                                  augment=options, shuffle=True), seed=9))
    full = _cat(_epoch(_loader(demo, augment=options, shuffle=True), seed=9))
    torch.testing.assert_close(rgb["s2"], full["s2"][:, [2, 1, 0]], rtol=0, atol=1e-5)
    torch.testing.assert_close(rgb["s1"], full["s1"], rtol=0, atol=1e-5)


def test_head_keeps_the_first_rows(demo):
    train = demo.data.train
    head = train.head(5)
    assert torch.equal(head.rows, train.rows[:5]) and len(head) == 5 and len(train) == demo.size
    assert head.images["s2"] is train.images["s2"]  # no copy of the arrays
    batches = _cat(_epoch(_loader(demo, head, batch_size=4)))
    everything = _cat(_epoch(_loader(demo, batch_size=4)))
    assert len(batches["label"]) == 5
    for key in ("s2", "s1", "label"):
        assert torch.equal(batches[key], everything[key][:5])
    # data.max_train_patches is the head of the training split
    limited = build_datasets(trial_config({"data": {"root": str(demo.root), "cache_dir": str(demo.cache),
                                                    "max_train_patches": 5}}))
    assert torch.equal(limited.train.rows, head.rows)
    assert len(limited.validation) == len(demo.data.validation)


def test_split_arrays_are_the_cache_without_copies(demo):
    dataset = BigEarthNetMM(demo.root, "train", cache_dir=demo.cache)
    split = split_arrays(dataset)
    assert split.s2_channels is None  # all ten bands: no channel selection
    assert split.images["s2"].dtype == torch.uint16 and split.images["s1"].dtype == torch.float32
    assert torch.equal(split.rows, torch.arange(len(dataset)))
    sample = dataset[3]
    assert torch.equal(split.images["s2"][int(split.rows[3])].float(), sample["image_s2"])
    assert torch.equal(split.labels[int(split.rows[3])].float(), sample["label"])
    # statistics are the training split's, as build_datasets normalises
    for key in ("s2", "s1"):
        shift, scale = channel_affine(dataset.stats()[key])
        assert torch.equal(shift, demo.data.normalisation[key][0])
        assert torch.equal(scale, demo.data.normalisation[key][1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches(demo):
    """On a GPU the loader pins, copies and resamples with torch gathers; same seed, same
    batches as the CPU's numba kernel (up to float32 rounding)."""
    options = AugmentOptions(flip=True, crop=True, synchronised=False, modality_drop=0.5)
    for augment in (None, options):
        cpu = _epoch(_loader(demo, augment=augment, shuffle=True), seed=3)
        loader = _loader(demo, augment=augment, shuffle=True, device=torch.device("cuda"))
        gpu = [{k: v.cpu() for k, v in batch.items()} for batch in loader.batches(3)]
        assert len(gpu) == len(cpu) == 3
        for ours, theirs in zip(gpu, cpu):
            assert torch.equal(ours["label"], theirs["label"])
            for key in ("s2", "s1"):
                _assert_float32_close(ours[key], theirs[key])


def test_leaving_an_epoch_early_stops_the_prefetch_thread(demo):
    """A consumer that leaves an epoch early (an exception in the step, a benchmark) must not
    deadlock with the prefetch thread, whichever hand-off that thread is blocked in: a batch,
    or the end of the epoch once the last batch waits in the queue."""
    import threading
    import time

    loader = _loader(demo, batch_size=max(1, len(demo.data.train) // 5), shuffle=True)
    assert len(loader) >= 4
    for taken in (1, len(loader) - 1):
        epoch = loader.batches(0)
        for _ in range(taken):
            next(epoch)
        time.sleep(0.5)  # the thread fills the queue and blocks on its next hand-off
        closer = threading.Thread(target=epoch.close)  # the generator's clean-up joins the thread
        closer.start()
        closer.join(timeout=10)
        assert not closer.is_alive(), f"closing after {taken} batch(es) deadlocked"
    assert not [t for t in threading.enumerate() if t.name == "mmvit-batches"]


def test_s1_left_in_db_passes_every_channel_unchanged(demo):
    """s1_normalisation=none: one identity (shift, scale) for all channels; the CPU kernels
    index them per channel, so VH must come out as stored, not scaled by memory past VV's."""
    from mmvit.data.transforms import channel_affine as affine

    normalisation = {"s1": affine(demo.stats["s1"], "none")}
    loader = BatchLoader(demo.data.validation, batch_size=8, device=CPU, normalisation=normalisation,
                         augment=AugmentOptions(flip=False, crop=False))
    batch = next(loader.batches(0))
    rows = demo.data.validation.rows[:len(batch["label"])].sort().values
    stored = demo.data.validation.images["s1"][rows].float()
    assert torch.equal(batch["s1"], stored)
