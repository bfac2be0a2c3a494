"""The demo archive: the exact v1 layout, determinism, imbalanced labels, and a learnable signal
in which fusing S2 and S1 beats either modality alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from mmvit.data import demo
from mmvit.data.bands import S1_BANDS, S2_ALL_BANDS, S2_BAND_SIZE, S2_BANDS
from mmvit.data.labels import LABELS_19, encode, labels_43_to_19
from mmvit.errors import DataError, SpecError

SMALL = 24
S2_KEYS = {"labels", "coordinates", "projection", "tile_source", "acquisition_date"}
S1_KEYS = {"labels", "coordinates", "projection", "corresponding_s2_patch", "scene_source",
           "acquisition_time"}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return demo.write_demo_archive(tmp_path_factory.mktemp("demo") / "archive", patches=SMALL, seed=7)


def _pairs(root: Path, split: str) -> list[tuple[str, str]]:
    lines = (root / "splits" / f"{split}.csv").read_text().splitlines()
    return [tuple(line.split(",")) for line in lines]


def _all_pairs(root: Path) -> list[tuple[str, str]]:
    return [pair for split in ("train", "val", "test") for pair in _pairs(root, split)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


# --------------------------------------------------------------------------- layout


def test_splits_cover_every_patch_once(small):
    sizes = {split: len(_pairs(small, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": SMALL // 2, "val": SMALL // 4, "test": SMALL // 4}
    pairs = _all_pairs(small)
    assert len(set(pairs)) == SMALL
    assert {s2 for s2, _ in pairs} == {p.name for p in (small / demo.S2_DIR).iterdir()}
    assert {s1 for _, s1 in pairs} == {p.name for p in (small / demo.S1_DIR).iterdir()}
    assert json.loads((small / demo.MARKER).read_text()) == {
        "generator": "mmvit.data.demo", "version": 2, "patches": SMALL, "seed": 7}


def test_band_files_look_like_the_real_archive(small):
    for s2, s1 in _all_pairs(small):
        meta = json.loads((small / demo.S2_DIR / s2 / f"{s2}_labels_metadata.json").read_text())
        ulx, uly = meta["coordinates"]["ulx"], meta["coordinates"]["uly"]
        assert meta["coordinates"] == {"ulx": ulx, "uly": uly, "lrx": ulx + 1200, "lry": uly - 1200}
        crs = None
        for band in S2_ALL_BANDS:
            with rasterio.open(small / demo.S2_DIR / s2 / f"{s2}_{band}.tif") as dataset:
                size = S2_BAND_SIZE[band]
                assert (dataset.driver, dataset.count, dataset.dtypes[0]) == ("GTiff", 1, "uint16")
                assert (dataset.width, dataset.height) == (size, size)
                assert dataset.compression is None
                assert tuple(dataset.transform)[:6] == (1200 / size, 0, ulx, 0, -1200 / size, uly)
                assert 32629 <= dataset.crs.to_epsg() <= 32635
                crs = crs or dataset.crs
                assert dataset.crs == crs
                values = dataset.read(1)
                assert 0 < values.min() and values.max() < 10_000
        for band in S1_BANDS:
            with rasterio.open(small / demo.S1_DIR / s1 / f"{s1}_{band}.tif") as dataset:
                assert (dataset.dtypes[0], dataset.width, dataset.height) == ("float32", 120, 120)
                assert tuple(dataset.transform)[:6] == (10, 0, ulx, 0, -10, uly)
                assert dataset.crs == crs
                values = dataset.read(1)
                assert -60 < values.mean() < 5 and not np.allclose(values, np.round(values))


def test_label_files_have_the_archive_keys(small):
    for s2, s1 in _all_pairs(small):
        s2_meta = json.loads((small / demo.S2_DIR / s2 / f"{s2}_labels_metadata.json").read_text())
        s1_meta = json.loads((small / demo.S1_DIR / s1 / f"{s1}_labels_metadata.json").read_text())
        assert set(s2_meta) == S2_KEYS and set(s1_meta) == S1_KEYS
        assert s1_meta["corresponding_s2_patch"] == s2
        assert s1_meta["labels"] == s2_meta["labels"]
        assert set(s1_meta["coordinates"]) == {"ulx", "uly", "lrx", "lly"}  # sic, as in BigEarthNet-S1
        assert "UTM zone" in s2_meta["projection"] and s2_meta["projection"] == s1_meta["projection"]
        assert labels_43_to_19(s2_meta["labels"])  # at least one 19-class label


def test_the_archive_reader_finds_every_patch(small):
    from mmvit.data.archive import label_vector, open_archive

    archive = open_archive(small)
    for split, file_split in (("train", "train"), ("validation", "val"), ("test", "test")):
        refs = archive.patches(split)  # also applies the official exclusion lists
        assert [(ref.patch, ref.s1_patch) for ref in refs] == sorted(_pairs(small, file_split))
        assert all(label_vector(ref).any() for ref in refs)


# --------------------------------------------------------------------------- writing


def test_same_seed_gives_identical_files(small, tmp_path):
    again = demo.write_demo_archive(tmp_path / "again", patches=SMALL, seed=7)
    assert _files(again) == _files(small)
    other = _files(demo.write_demo_archive(tmp_path / "other", patches=SMALL, seed=8))
    assert other.keys() != _files(small).keys()


def test_existing_archive_is_reused_and_anything_else_refused(small, tmp_path):
    assert demo.write_demo_archive(small, patches=SMALL, seed=7) == small
    with pytest.raises(DataError, match=str(small)):
        demo.write_demo_archive(small, patches=SMALL, seed=8)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=str(foreign)):
        demo.write_demo_archive(foreign, patches=3)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (demo.write_demo_archive(empty, patches=3) / demo.MARKER).is_file()
    for patches, seed in ((2, 0), (3, -1)):
        with pytest.raises(SpecError):
            demo.write_demo_archive(tmp_path / "bad", patches=patches, seed=seed)


def test_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    real_write_patch = demo._write_patch
    written = []

    def write_then_fail(*args):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(real_write_patch(*args))

    monkeypatch.setattr(demo, "_write_patch", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        demo.write_demo_archive(tmp_path / "archive", patches=6)
    assert list(tmp_path.iterdir()) == []


def test_default_root_and_ensure(tmp_path, monkeypatch):
    monkeypatch.delenv("MMVIT_DEMO_DIR", raising=False)
    assert demo.default_demo_root(40, 3).parts[-3:] == (".cache", "mmvit-study", "demo-v2-n40-s3")
    monkeypatch.setenv("MMVIT_DEMO_DIR", str(tmp_path / "demo"))
    root = tmp_path / "demo" / "demo-v2-n4-s1"
    assert demo.ensure_demo_archive(patches=4, seed=1) == root
    marker = (root / "mmvit_demo.json").stat().st_mtime_ns
    assert demo.ensure_demo_archive(patches=4, seed=1) == root
    assert (root / "mmvit_demo.json").stat().st_mtime_ns == marker  # found, not rewritten
    assert demo.ensure_demo_archive(patches=5, seed=1) == tmp_path / "demo" / "demo-v2-n5-s1"
    assert len(_all_pairs(root)) == 4


# --------------------------------------------------------------------------- generative model


def test_labels_are_imbalanced_like_the_archive():
    labels = demo.draw_labels(np.random.default_rng(0), 600)
    counts = dict(zip(LABELS_19, labels.sum(axis=0)))
    assert labels.any(axis=1).all()
    assert 2.2 < labels.sum(axis=1).mean() < 3.0 and labels.sum(axis=1).max() >= 5
    common = ("Arable land", "Mixed forest", "Coniferous forest", "Transitional woodland, shrub")
    rare = ("Beaches, dunes, sands", "Coastal wetlands", "Industrial or commercial units")
    assert min(counts[name] for name in common) > 3 * max(counts[name] for name in rare)
    assert min(counts[name] for name in rare) >= 20  # the 6 % floor: about 10 training patches at the least


def test_every_label_covers_part_of_its_patch():
    rng = np.random.default_rng(0)
    for labels in demo.draw_labels(rng, 300):
        classes = np.flatnonzero(labels)
        cells, cell_classes = demo.scene_layout(rng, classes)
        covered = cell_classes[cells]
        assert set(np.unique(covered)) == set(classes)
        assert min(np.mean(covered == c) for c in classes) >= 0.05


# --------------------------------------------------------------------------- learnability

SIDE = 15
"""Pixels per side after average pooling: 8×8 blocks of 10 m pixels."""


def _pool(band: np.ndarray) -> np.ndarray:
    block = band.shape[0] // SIDE
    return band.reshape(SIDE, block, SIDE, block).mean(axis=(1, 3))


def _read_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S2 (N, 10, 15, 15), S1 (N, 2, 15, 15) and labels (N, 19), read straight from the files."""
    s2_images, s1_images, targets = [], [], []
    for s2, s1 in _pairs(root, split):
        s2_dir, s1_dir = root / demo.S2_DIR / s2, root / demo.S1_DIR / s1
        s2_images.append([_pool(rasterio.open(s2_dir / f"{s2}_{b}.tif").read(1).astype(np.float32))
                          for b in S2_BANDS])
        s1_images.append([_pool(rasterio.open(s1_dir / f"{s1}_{b}.tif").read(1)) for b in S1_BANDS])
        names = json.loads((s2_dir / f"{s2}_labels_metadata.json").read_text())["labels"]
        targets.append(encode(labels_43_to_19(names)))
    return np.array(s2_images), np.array(s1_images), np.array(targets, dtype=np.float32)


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(axis=(0, 2, 3), keepdims=True), train.std(axis=(0, 2, 3), keepdims=True)
    return (train - mean) / std, (test - mean) / std


def _train_and_predict(train: np.ndarray, targets: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Scores of a tiny conv net (per-pixel features, global max pool) trained with Adam + BCE."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    width = 48
    model = nn.Sequential(
        nn.Conv2d(train.shape[1], width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, width, 1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(width, len(LABELS_19)),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(train).float(), torch.from_numpy(targets)
    shuffle = torch.Generator().manual_seed(0)
    for _ in range(60):
        order = torch.randperm(len(x), generator=shuffle)
        for start in range(0, len(x), 64):  # few, large steps: cheap on 2 busy cores
            batch = order[start:start + 64]
            loss = nn.functional.binary_cross_entropy_with_logits(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(test).float())).numpy()


@pytest.mark.slow  # 37 s: three small networks trained for 60 epochs each
def test_signal_is_learnable_and_fusion_beats_each_modality(tmp_path):
    import torch
    from sklearn.metrics import average_precision_score

    root = demo.write_demo_archive(tmp_path / "demo", patches=600, seed=0)
    s2_train, s1_train, y_train = _read_split(root, "train")
    s2_test, s1_test, y_test = _read_split(root, "test")
    present = y_test.sum(axis=0) > 0

    def macro_ap(scores: np.ndarray) -> float:
        return average_precision_score(y_test[:, present], scores[:, present], average="macro")

    s2 = _standardise(s2_train, s2_test)
    s1 = _standardise(s1_train, s1_test)
    inputs = {"s1": s1, "s2": s2, "s2+s1": tuple(np.concatenate(pair, axis=1) for pair in zip(s2, s1))}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ap = {name: macro_ap(_train_and_predict(train, y_train, test))
              for name, (train, test) in inputs.items()}
    finally:
        torch.set_num_threads(threads)
    prior = macro_ap(np.broadcast_to(y_train.mean(axis=0), y_test.shape))
    print(f"macro AP: prior {prior:.3f}, " + ", ".join(f"{k} {v:.3f}" for k, v in ap.items()))

    assert ap["s1"] > prior + 0.15 and ap["s2"] > prior + 0.15
    assert ap["s2+s1"] > prior + 0.4
    assert ap["s2+s1"] > ap["s2"] + 0.1
    assert ap["s2+s1"] > ap["s1"] + 0.15
