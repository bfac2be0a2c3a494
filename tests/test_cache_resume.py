"""A cache build goes on where a killed one stopped, and shards joined give the same bytes as one
uninterrupted build: arrays, valid masks, statistics and skipped patches."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mmvit.cli import app
from mmvit.data import cache as cache_module
from mmvit.data.archive import open_archive
from mmvit.data.cache import SplitCache, split_components

CHUNK = 2  # the 20-patch training split of the demo archive in 10 chunks

# A conversion in its own process, as `mmvit-study data cache` runs it: slowed down, and hanging at
# its ``hang_at``-th patch (if any) so that a test kills it at a chunk of its choice.
CONVERT = """
import sys, time
from mmvit.data import cache
from mmvit.data.patch_reader import PatchReader
cache.CHUNK = {chunk}
original = PatchReader.__call__
calls = [0]
def slow(self, ref):
    calls[0] += 1
    time.sleep(600 if calls[0] == {hang_at} else {sleep})
    return original(self, ref)
PatchReader.__call__ = slow
from mmvit.cli import app
app(["data", "cache", *sys.argv[1:]], prog_name="mmvit-study")
"""


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(cache_module, "CHUNK", CHUNK)


def _build(root: Path, cache_dir: Path, modalities: str = "s2+s1", speckle: str = "none", *,
           shard: tuple[int, int] | None = None, progress: bool = False, skip: bool = False) -> bool:
    components, reader = split_components(modalities, speckle_filter=speckle)
    return SplitCache(open_archive(root), "train", cache_dir).ensure(
        components, reader, workers=1, progress=progress, shard=shard, skip_unreadable=skip)


def _split_dir(root: Path, cache_dir: Path) -> Path:
    return SplitCache(open_archive(root), "train", cache_dir).dir


def _assert_same_cache(a: Path, b: Path) -> None:
    """Same files, byte for byte, but for the conversion's seconds in the JSON."""
    names = sorted(p.name for p in a.iterdir() if p.name != ".lock")
    assert names == sorted(p.name for p in b.iterdir() if p.name != ".lock")
    assert not [n for n in names if "partial" in n or n.endswith(".jsonl")], names
    for name in names:
        if name.endswith(".npy"):
            x, y = np.load(a / name), np.load(b / name)
            assert x.dtype == y.dtype and np.array_equal(x, y), name
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
        else:
            x, y = json.loads((a / name).read_text()), json.loads((b / name).read_text())
            if isinstance(x, dict):
                x.pop("seconds"), y.pop("seconds")
            assert x == y, name


def _recorded(split_dir: Path, component: str) -> int:
    """Chunk lines a component's journals hold (complete lines only)."""
    lines = 0
    for journal in split_dir.glob(f"{component}.chunks*.jsonl"):
        lines += journal.read_text().count("\n")
    return lines


def _start(root: Path, cache_dir: Path, *args: str, sleep: float, hang_at: int = 0) -> subprocess.Popen:
    code = CONVERT.format(chunk=CHUNK, sleep=sleep, hang_at=hang_at)
    return subprocess.Popen(
        [sys.executable, "-c", code, str(root), "--split", "train", "--cache-dir", str(cache_dir),
         "--workers", "1", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_build_resumes_to_identical_output(demo_root, tmp_path, monkeypatch, capsys):
    _build(demo_root, tmp_path / "reference")
    chunks = -(-len(open_archive(demo_root).patches("train")) // CHUNK)
    kill_after = random.randrange(1, chunks - 1)  # chunks recorded, then killed in the next one
    process = _start(demo_root, tmp_path / "killed", sleep=0.01,
                     hang_at=kill_after * CHUNK + random.randrange(1, CHUNK + 1))
    split_dir = _split_dir(demo_root, tmp_path / "killed")
    components, _ = split_components("s2+s1")
    deadline = time.monotonic() + 120
    while min(_recorded(split_dir, c.name) for c in components) < kill_after and process.poll() is None:
        assert time.monotonic() < deadline, "the conversion recorded too few chunks in time"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, f"ended before the kill: {stderr}"

    split_cache = SplitCache(open_archive(demo_root), "train", tmp_path / "killed")
    assert not any(split_cache.is_complete(c) for c in components)
    left = {c.name: len(split_cache) - sum(r["rows"] for r in split_cache._records(c).values())
            for c in components}
    assert left == {c.name: len(split_cache) - kill_after * CHUNK for c in components}, kill_after
    converted = {c.name: 0 for c in components}
    original = cache_module._convert_chunk

    def counting(job):
        for name in job.targets:
            converted[name] += len(job.refs)
        return original(job)

    monkeypatch.setattr(cache_module, "_convert_chunk", counting)
    capsys.readouterr()
    _build(demo_root, tmp_path / "killed", progress=True)
    assert converted == left, f"killed after {kill_after} chunks: the rerun redid recorded chunks"
    _assert_same_cache(split_dir, _split_dir(demo_root, tmp_path / "reference"))
    lines = capsys.readouterr().err
    done = len(split_cache) - max(left.values())
    assert f"caching train: resuming, {done:,} of {len(split_cache):,} patches already converted" in lines
    assert f"{len(split_cache)} / {len(split_cache)} patches (100.0 %)" in lines and "patches/s" in lines


def test_concurrent_shards_join_into_the_unsharded_build(demo_root, tmp_path):
    shards = [_start(demo_root, tmp_path / "sharded", "--shard", f"{k}/2", sleep=0.02) for k in (1, 2)]
    _build(demo_root, tmp_path / "reference")
    outputs = [process.communicate(timeout=180) for process in shards]
    for process, (stdout, stderr) in zip(shards, outputs):
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
    assert any("train: 20 patches cached (all 2 shards done)" in out for out, _ in outputs), outputs
    _assert_same_cache(_split_dir(demo_root, tmp_path / "sharded"), _split_dir(demo_root, tmp_path / "reference"))


def test_one_shard_then_a_plain_run_finishes_the_split(demo_root, tmp_path):
    assert not _build(demo_root, tmp_path / "cache", shard=(2, 3))
    split_dir = _split_dir(demo_root, tmp_path / "cache")
    assert _recorded(split_dir, "s2-bilinear") == 3  # chunks 1, 4 and 7 of 10
    assert not _build(demo_root, tmp_path / "cache", shard=(3, 3))
    assert _build(demo_root, tmp_path / "cache")
    _build(demo_root, tmp_path / "reference")
    _assert_same_cache(split_dir, _split_dir(demo_root, tmp_path / "reference"))


def test_skipped_patches_survive_in_chunk_order(demo_root, tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(demo_root, root)
    refs = open_archive(root).patches("train")
    for ref in (refs[12], refs[3]):  # chunk 6, which shard 1/2 converts, and chunk 1, which it leaves
        (ref.s1_dir / f"{ref.s1_patch}_VH.tif").write_bytes(b"not a tiff")
    _build(root, tmp_path / "reference", skip=True)
    assert not _build(root, tmp_path / "cache", shard=(1, 2), skip=True)
    assert _build(root, tmp_path / "cache", skip=True)
    split_dir = _split_dir(root, tmp_path / "cache")
    _assert_same_cache(split_dir, _split_dir(root, tmp_path / "reference"))
    meta = json.loads((split_dir / "s2-bilinear.json").read_text())
    assert [s["patch"] for s in meta["skipped"]] == [refs[3].patch, refs[12].patch]
    assert np.flatnonzero(~np.load(split_dir / "s2-bilinear.valid.npy")).tolist() == [3, 12]


def test_a_rerun_with_other_components_shares_what_it_can(demo_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = cache_module.PatchReader.__call__

    def dying_reader(self, ref):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return original(self, ref)

    monkeypatch.setattr(cache_module.PatchReader, "__call__", dying_reader)
    with pytest.raises(KeyboardInterrupt):
        _build(demo_root, tmp_path / "cache")  # labels, S2 and S1 get 4 chunks each
    monkeypatch.setattr(cache_module.PatchReader, "__call__", original)
    split_dir = _split_dir(demo_root, tmp_path / "cache")
    assert _recorded(split_dir, "labels") == 4
    _build(demo_root, tmp_path / "cache", "s1", "lee5")  # labels go on; S1 with Lee starts
    _build(demo_root, tmp_path / "cache")  # S2 and unfiltered S1 go on from their 4 chunks
    _build(demo_root, tmp_path / "both", "s2+s1")
    _build(demo_root, tmp_path / "both", "s1", "lee5")
    reference = _split_dir(demo_root, tmp_path / "both")
    # The labels' JSON names the reader of the run that finished them: here the S1-only one.
    assert json.loads((split_dir / "labels.json").read_text())["reader"]["speckle_filter"] == "lee5"
    _build(demo_root, tmp_path / "lee", "s1", "lee5")
    (reference / "labels.json").write_text((_split_dir(demo_root, tmp_path / "lee") / "labels.json").read_text())
    _assert_same_cache(split_dir, reference)


def test_a_partial_file_that_does_not_fit_is_not_reused(demo_root, tmp_path, caplog):
    _build(demo_root, tmp_path / "reference")
    split_cache = SplitCache(open_archive(demo_root), "train", tmp_path / "cache")
    split_cache.dir.mkdir(parents=True)
    count = len(split_cache)
    np.lib.format.open_memmap(split_cache.dir / "s2-bilinear.partial.npy", mode="w+", dtype="uint16",
                              shape=(count + 4, 10, 120, 120))[:] = 7  # the split had more patches
    np.lib.format.open_memmap(split_cache.dir / "labels.partial.npy", mode="w+", dtype="float32",
                              shape=(count, 19))[:] = 7
    (split_cache.dir / "s1-none-float32.partial.npy").write_bytes(b"\x93NUMPY truncated")
    bogus = {"start": 0, "rows": CHUNK, "invalid": [0], "skipped": [["x", "y"]], "stats": None}
    for name in ("s2-bilinear", "labels", "s1-none-float32"):
        (split_cache.dir / f"{name}.chunks.jsonl").write_text(json.dumps(bogus) + "\n")
    _build(demo_root, tmp_path / "cache")
    _assert_same_cache(split_cache.dir, _split_dir(demo_root, tmp_path / "reference"))
    anew = [r.getMessage() for r in caplog.records if "anew" in r.getMessage()]
    assert len(anew) == 3 and any(f"({count + 4}, 10, 120, 120)" in m for m in anew), anew


@pytest.mark.parametrize("value", ["0/4", "5/4", "a/b", "2", "1/0", "-1/4"])
def test_bad_shard_values_are_a_clear_error(demo_root, tmp_path, value):
    result = CliRunner().invoke(app, ["data", "cache", str(demo_root), "--split", "train",
                                      "--cache-dir", str(tmp_path), "--shard", value])
    assert result.exit_code == 1, result.output
    assert "--shard takes K/N" in result.output and repr(value) in result.output
    assert "SLURM_ARRAY_TASK_ID" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir()), "nothing is converted before the option is checked"
