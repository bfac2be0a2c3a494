"""A complete split cache gives its patch list without a listing of the archive, and never a stale
one: the pointer (:mod:`mmvit.data.cache_index`) holds only while the archive's stamp does."""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pytest
import torch

from mmvit.data import archive as archive_module
from mmvit.data import stamp as stamp_module
from mmvit.data.archive import V1Archive, V2Archive, open_archive
from mmvit.data.bigearthnet import BigEarthNetMM
from mmvit.data.cache_index import PatchList, pointer_path
from mmvit.errors import DataError


@pytest.fixture(autouse=True)
def _settled_at_once(monkeypatch):
    """The test archives are seconds old: trust their stamps at once (one test checks the 2 s)."""
    monkeypatch.setattr(stamp_module, "SETTLE_NS", 0)
    monkeypatch.setattr(archive_module, "_warned", set())


@pytest.fixture
def scans(monkeypatch):
    """The splits listed by any archive, in order."""
    calls: list[str] = []
    for cls in (V1Archive, V2Archive):
        original = cls._scan

        def counted(self, split, exclude, _original=original):
            calls.append(split)
            return _original(self, split, exclude)

        monkeypatch.setattr(cls, "_scan", counted)
    return calls


@pytest.fixture
def archive_copy(tmp_path, demo_root):
    root = tmp_path / "archive"
    shutil.copytree(demo_root, root)
    return root


def _pointer(root, cache, split="train", exclude=True):
    return pointer_path(cache / open_archive(root).identity(), split, exclude)


def _same(a: BigEarthNetMM, b: BigEarthNetMM) -> None:
    assert a.patch_names == b.patch_names and a.rows.tolist() == b.rows.tolist()
    assert a.presence == b.presence and a.skipped == b.skipped
    assert torch.equal(torch.from_numpy(a.label_matrix()), torch.from_numpy(b.label_matrix()))
    for index in (0, len(a) // 2, len(a) - 1):
        x, y = a[index], b[index]
        assert x.keys() == y.keys() and x["patch"] == y["patch"]
        for key in ("image_s2", "image_s1", "label"):
            if key in x:
                assert torch.equal(x[key], y[key]), key


def test_a_complete_cache_opens_without_listing_the_archive(archive_copy, tmp_path, scans):
    cache = tmp_path / "cache"
    slow = BigEarthNetMM(archive_copy, "train", cache_dir=cache, workers=1)
    assert scans == ["train"] and _pointer(archive_copy, cache).is_file()
    fast = BigEarthNetMM(archive_copy, "train", cache_dir=cache, workers=1)
    assert scans == ["train"], "the second open must not list the archive"
    assert isinstance(fast.refs, PatchList)
    _same(slow, fast)
    assert list(fast.refs) == slow.refs, "refs built on demand equal the listed ones"
    assert fast.archive.presence("train") == slow.presence and scans == ["train"]


def test_a_new_component_on_the_fast_path_converts_the_same_patches(archive_copy, tmp_path, scans):
    cache = tmp_path / "cache"
    BigEarthNetMM(archive_copy, "validation", "s1", cache_dir=cache, workers=1)
    filtered = BigEarthNetMM(archive_copy, "validation", "s1", speckle_filter="median3",
                             cache_dir=cache, workers=1)
    assert scans == ["validation"]
    _same(BigEarthNetMM(archive_copy, "validation", "s1", speckle_filter="median3"), filtered)


def test_the_v2_layout_opens_without_listing_and_sees_a_tile_change(v2_root, tmp_path, scans):
    root, cache = tmp_path / "v2", tmp_path / "cache"
    shutil.copytree(v2_root, root)
    slow = BigEarthNetMM(root, "test", "rgb+s1", cache_dir=cache, workers=1)
    fast = BigEarthNetMM(root, "test", "rgb+s1", cache_dir=cache, workers=1)
    assert scans == ["test"]
    _same(slow, fast)
    assert list(fast.refs) == slow.refs, "v2 refs carry their labels from the metadata"
    gone = slow.refs[0]
    shutil.rmtree(gone.s2_dir)  # inside a tile folder: the top folder does not change
    shrunk = BigEarthNetMM(root, "test", "rgb+s1", cache_dir=cache, workers=1)
    assert scans == ["test", "test"] and gone.patch not in shrunk.patch_names


def test_a_patch_folder_added_or_removed_invalidates_the_record(archive_copy, demo_root, tmp_path, scans):
    cache = tmp_path / "cache"
    refs = open_archive(archive_copy).patches("train")
    shutil.rmtree(refs[2].s2_dir)
    scans.clear()
    first = BigEarthNetMM(archive_copy, "train", "s1", cache_dir=cache, workers=1)
    assert refs[2].patch not in first.patch_names
    BigEarthNetMM(archive_copy, "train", "s1", cache_dir=cache, workers=1)
    assert len(scans) == 1
    folder = json.loads(_pointer(archive_copy, cache).read_text())["folder"]
    shutil.copytree(demo_root / archive_module.V1_S2_DIR / refs[2].patch, refs[2].s2_dir)
    grown = BigEarthNetMM(archive_copy, "train", "s1", cache_dir=cache, workers=1)
    assert len(scans) == 2 and refs[2].patch in grown.patch_names and len(grown) == len(first) + 1
    assert grown.presence.complete and not first.presence.complete
    assert json.loads(_pointer(archive_copy, cache).read_text())["folder"] != folder, "a new cache folder"
    shutil.rmtree(refs[5].s1_dir)
    shrunk = BigEarthNetMM(archive_copy, "train", "s1", cache_dir=cache, workers=1)
    assert len(scans) == 3 and refs[5].patch not in shrunk.patch_names
    again = BigEarthNetMM(archive_copy, "train", "s1", cache_dir=cache, workers=1)
    assert len(scans) == 3
    _same(shrunk, again)


def test_a_changed_split_list_invalidates_the_record(archive_copy, tmp_path, scans):
    cache = tmp_path / "cache"
    before = BigEarthNetMM(archive_copy, "test", "s1", cache_dir=cache, workers=1)
    csv = archive_copy / "splits" / "test.csv"
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text("".join(lines[1:]))
    after = BigEarthNetMM(archive_copy, "test", "s1", cache_dir=cache, workers=1)
    assert scans == ["test", "test"]
    assert after.patch_names == before.patch_names[1:] and after.presence.listed == before.presence.listed - 1


def test_changed_v2_metadata_invalidates_the_record(v2_root, tmp_path, scans):
    root, cache = tmp_path / "v2", tmp_path / "cache"
    shutil.copytree(v2_root, root)
    before = BigEarthNetMM(root, "validation", "s1", cache_dir=cache, workers=1)
    frame = pd.read_parquet(root / "metadata.parquet")
    moved = before.patch_names[0]
    frame.loc[frame["patch_id"] == moved, "split"] = "train"
    frame.to_parquet(root / "metadata.parquet")
    after = BigEarthNetMM(root, "validation", "s1", cache_dir=cache, workers=1)
    assert scans == ["validation", "validation"] and after.patch_names == before.patch_names[1:]


def test_presence_warning_and_require_complete_come_from_the_record(archive_copy, tmp_path, scans, caplog,
                                                                    monkeypatch):
    cache = tmp_path / "cache"
    refs = open_archive(archive_copy).patches("train")
    for ref in refs[:3]:
        shutil.rmtree(ref.s1_dir)
    scans.clear()
    slow = BigEarthNetMM(archive_copy, "train", "s1", cache_dir=cache, workers=1)
    assert scans == ["train"]
    monkeypatch.setattr(archive_module, "_warned", set())  # as in a new trial process
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmvit.data.archive"):
        fast = BigEarthNetMM(archive_copy, "train", "s1", cache_dir=cache, workers=1)
        BigEarthNetMM(archive_copy, "train", "s1", cache_dir=cache, workers=1)
    assert scans == ["train"]
    lines = [r.getMessage() for r in caplog.records if r.name == "mmvit.data.archive"]
    expected = f"train: {len(refs) - 3:,} of {len(refs):,} official patches present"
    assert len(lines) == 1 and lines[0].startswith(expected), "one warning per split and process"
    assert fast.presence == slow.presence and fast.presence.describe() == expected
    assert fast.presence.missing == tuple(sorted(r.patch for r in refs[:3]))
    with pytest.raises(DataError, match=expected.split(": ")[1]):
        BigEarthNetMM(archive_copy, "train", "s1", cache_dir=cache, require_complete=True)
    assert scans == ["train"]


def test_without_exclusions_the_split_has_a_record_of_its_own(archive_copy, tmp_path, scans):
    cache = tmp_path / "cache"
    every = BigEarthNetMM(archive_copy, "all", "s1", cache_dir=cache, exclude=False, workers=1)
    BigEarthNetMM(archive_copy, "all", "s1", cache_dir=cache, workers=1)
    assert scans == ["all", "all"]
    assert _pointer(archive_copy, cache, "all", exclude=False).is_file()
    assert BigEarthNetMM(archive_copy, "all", "s1", cache_dir=cache, exclude=False).patch_names == every.patch_names
    assert scans == ["all", "all"]


@pytest.mark.parametrize("damage", ["pointer garbage", "pointer fields", "pointer folder", "no pointer",
                                    "index garbage", "index names", "no index"])
def test_a_broken_record_falls_back_to_listing_and_is_repaired(archive_copy, tmp_path, scans, damage):
    cache = tmp_path / "cache"
    slow = BigEarthNetMM(archive_copy, "test", "s1", cache_dir=cache, workers=1)
    pointer = _pointer(archive_copy, cache, "test")
    record = json.loads(pointer.read_text())
    index = pointer.parent / record["folder"] / "index.json"
    if damage == "pointer garbage":
        pointer.write_text('{"version": 1, "spl')
    elif damage == "pointer fields":
        pointer.write_text(json.dumps({**record, "presence": {"listed": "many"}}))
    elif damage == "pointer folder":
        pointer.write_text(json.dumps({**record, "folder": "test-000000000000"}))
    elif damage == "no pointer":
        pointer.unlink()
    elif damage == "index garbage":
        index.write_text("[[")
    elif damage == "index names":
        names = json.loads(index.read_text())
        index.write_text(json.dumps(names[::-1]))
    else:
        index.unlink()
    again = BigEarthNetMM(archive_copy, "test", "s1", cache_dir=cache, workers=1)
    assert scans == ["test", "test"]
    _same(slow, again)
    repaired = BigEarthNetMM(archive_copy, "test", "s1", cache_dir=cache, workers=1)
    assert scans == ["test", "test"], "the listing rewrote the pointer and the index"
    _same(slow, repaired)


def test_an_archive_changed_just_before_its_listing_is_not_recorded(archive_copy, tmp_path, scans, monkeypatch):
    monkeypatch.setattr(stamp_module, "SETTLE_NS", 3_600 * 10**9)
    cache = tmp_path / "cache"
    BigEarthNetMM(archive_copy, "test", "s1", cache_dir=cache, workers=1)
    assert not _pointer(archive_copy, cache, "test").exists()
    BigEarthNetMM(archive_copy, "test", "s1", cache_dir=cache, workers=1)
    assert scans == ["test", "test"]


@pytest.mark.parametrize("pairs", [[("S2A_MSIL2A_20170613T101031_0_45", "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_0_45")] * 3,
                                   [("only", "one")], [("zoë", "s1"), ("b", "c")], [("a], [b", 'q"uote')]])
def test_the_index_reads_back_what_was_written_and_hashes_as_the_folder_name(tmp_path, pairs):
    import hashlib

    from mmvit.data.cache_index import PatchNames, read_index, write_index

    names = PatchNames.from_pairs(pairs)
    write_index(tmp_path / "index.json", names)
    back = read_index(tmp_path / "index.json")
    assert back == names and back.names() == [a for a, _ in pairs]
    expected = hashlib.sha256("\n".join(a for a, _ in pairs).encode()).hexdigest()[:12]
    assert back.digest() == names.digest() == expected
    (tmp_path / "indented.json").write_text(json.dumps([list(p) for p in pairs], indent=2))
    assert read_index(tmp_path / "indented.json") == names, "any JSON layout reads (then through json)"
