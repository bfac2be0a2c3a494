"""The data commands as a user runs them: messages, exit codes, no tracebacks."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from mmvit.cli import app

runner = CliRunner()


def test_data_check_reports_layout_and_split_counts(demo_root):
    result = runner.invoke(app, ["data", "check", str(demo_root), "--deep"])
    assert result.exit_code == 0, result.output
    assert "layout v1" in result.output
    assert str(demo_root / "splits") in result.output
    from mmvit.data.archive import open_archive

    archive = open_archive(demo_root)
    for split in ("train", "validation", "test"):
        line = next(l for l in result.output.splitlines() if l.strip().lstrip("│┃ ").startswith(split))
        assert f"{len(archive.patches(split)):,}" in line


def test_data_check_v2(v2_root):
    result = runner.invoke(app, ["data", "check", str(v2_root)])
    assert result.exit_code == 0, result.output
    assert "layout v2" in result.output and "metadata.parquet" in result.output


def test_data_check_reports_missing_files_and_exits_1(tmp_path, demo_root):
    import shutil

    root = tmp_path / "archive"
    shutil.copytree(demo_root, root)
    from mmvit.data.archive import open_archive

    ref = open_archive(root).patches("test")[0]
    (ref.s2_dir / f"{ref.patch}_B05.tif").unlink()
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1
    assert f"{ref.patch}_B05.tif" in result.output and "1 patch(es)" in result.output


def test_not_an_archive_exits_1_with_message_not_traceback(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "mmvit", "data", "check", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 1
    assert "is not a BigEarthNet-MM archive" in process.stderr
    assert str(tmp_path) in process.stderr
    assert "Traceback" not in process.stderr + process.stdout


def test_data_demo_then_cache(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["data", "demo", "--out", str(out), "--patches", "12", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert (out / "BigEarthNet-v1.0").is_dir() and (out / "BigEarthNet-S1-v1.0").is_dir()
    result = runner.invoke(app, ["data", "cache", str(out), "--split", "train", "--split", "test",
                                 "--cache-dir", str(tmp_path / "cache"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    from mmvit.data.archive import open_archive

    assert f"train: {len(open_archive(out).patches('train'))} patches cached" in result.output
    assert list((tmp_path / "cache").rglob("s2-bilinear.json"))
