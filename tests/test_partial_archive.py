"""A partial archive (part of BigEarthNet on disk) holds exactly the patch pairs present."""

from __future__ import annotations

import logging
import shutil

import pytest
from typer.testing import CliRunner

from mmvit.cli import app
from mmvit.data import archive as archive_module
from mmvit.data.archive import open_archive
from mmvit.data.bigearthnet import BigEarthNetMM
from mmvit.errors import DataError

runner = CliRunner()
OFFICIAL = {"train": 269_695, "validation": 123_723, "test": 125_866}


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """Each test sees its own once-per-split warnings."""
    monkeypatch.setattr(archive_module, "_warned", set())


@pytest.fixture
def partial_demo(tmp_path, demo_root):
    """A copy of the demo archive with one train pair's S2 folder and another's S1 folder gone."""
    root = tmp_path / "archive"
    shutil.copytree(demo_root, root)
    refs = open_archive(root).patches("train")
    shutil.rmtree(refs[1].s2_dir)
    shutil.rmtree(refs[4].s1_dir)
    return root, refs, {refs[1].patch, refs[4].patch}


def test_six_real_example_patches_load_as_4_train_0_validation_1_test(example_root):
    archive = open_archive(example_root)
    counts = {split: archive.presence(split) for split in OFFICIAL}
    assert {s: (p.present, p.listed) for s, p in counts.items()} == {
        "train": (4, 269_695), "validation": (0, 123_723), "test": (1, 125_866)}
    assert counts["train"].describe() == "train: 4 of 269,695 official patches present"
    assert len(counts["validation"].missing) == archive_module.MISSING_EXAMPLES
    train = BigEarthNetMM(example_root, "train")
    assert len(train) == 4
    for index, name in enumerate(train.patch_names):
        assert train[index]["patch"] == name, "an index returns the patch asked for"
    assert len(BigEarthNetMM(example_root, "test")) == 1
    with pytest.raises(DataError, match="0 of 123,723 official patches present"):
        BigEarthNetMM(example_root, "validation")


def test_one_warning_per_split_however_many_datasets(example_root, caplog):
    with caplog.at_level(logging.WARNING, logger="mmvit.data.archive"):
        for _ in range(3):
            BigEarthNetMM(example_root, "train")
        BigEarthNetMM(example_root, "test")
    lines = [r.getMessage() for r in caplog.records if r.name == "mmvit.data.archive"]
    assert len(lines) == 2
    assert lines[0].startswith("train: 4 of 269,695 official patches present")
    assert "Skipping" not in caplog.text


def test_require_complete_refuses_a_partial_archive(example_root):
    with pytest.raises(DataError) as error:
        BigEarthNetMM(example_root, "train", require_complete=True)
    message = str(error.value)
    assert "4 of 269,695" in message and str(example_root) in message and "require-complete" in message


def test_missing_s2_or_s1_folder_leaves_the_pair_out(partial_demo):
    root, refs, gone = partial_demo
    dataset = BigEarthNetMM(root, "train")
    assert len(dataset) == len(refs) - 2
    assert gone.isdisjoint(dataset.patch_names)
    presence = dataset.presence
    assert (presence.present, presence.listed) == (len(refs) - 2, len(refs))
    assert set(presence.missing) == gone
    for index in (0, 1, 4, len(dataset) - 1):
        assert dataset[index]["patch"] == dataset.patch_names[index]


def test_a_folder_that_appears_is_seen_by_the_next_archive(partial_demo, demo_root):
    root, refs, gone = partial_demo
    assert open_archive(root).presence("train").present == len(refs) - 2
    shutil.copytree(demo_root / "BigEarthNet-v1.0" / refs[1].patch, refs[1].s2_dir)
    assert open_archive(root).presence("train").present == len(refs) - 1


def test_cache_of_a_partial_archive_holds_the_present_pairs_and_is_rebuilt_when_it_grows(partial_demo, demo_root, tmp_path):
    root, refs, gone = partial_demo
    cached = BigEarthNetMM(root, "train", cache_dir=tmp_path / "cache", modalities="s1")
    assert len(cached) == len(refs) - 2 and gone.isdisjoint(cached.patch_names)
    shutil.copytree(demo_root / "BigEarthNet-v1.0" / refs[1].patch, refs[1].s2_dir)
    grown = BigEarthNetMM(root, "train", cache_dir=tmp_path / "cache", modalities="s1")
    assert len(grown) == len(refs) - 1 and refs[1].patch in grown.patch_names


def test_v2_partial_archive(v2_root, tmp_path):
    root = tmp_path / "v2"
    shutil.copytree(v2_root, root)
    refs = open_archive(root).patches("test")
    shutil.rmtree(refs[0].s2_dir)
    presence = open_archive(root).presence("test")
    assert (presence.present, presence.listed, presence.missing) == (len(refs) - 1, len(refs), (refs[0].patch,))
    assert refs[0].patch not in BigEarthNetMM(root, "test").patch_names


def test_data_check_lists_counts_and_first_missing_names(partial_demo):
    root, refs, gone = partial_demo
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert f"train: {len(refs) - 2:,} of {len(refs):,} official patches present" in result.output
    for name in gone:
        assert name in result.output
    strict = runner.invoke(app, ["data", "check", str(root), "--require-complete"])
    assert strict.exit_code == 1
    assert "incomplete" in strict.output and "Traceback" not in strict.output


def test_study_records_presence_and_the_report_header_shows_it(example_root, tmp_path):
    from mmvit.report import build_report
    from mmvit.study.runner import archive_presence
    from tests.report_fixtures import spec, write_study

    presence = archive_presence(str(example_root))
    assert presence == {"train": [4, 269_695], "validation": [0, 123_723], "test": [1, 125_866]}
    with pytest.raises(DataError, match="incomplete"):
        archive_presence(str(example_root), require_complete=True)
    url = f"sqlite:///{tmp_path}/partial.db"
    arms = [{"name": "model.fusion=sct", "labels": {"model.fusion": "sct"}, "baseline": True}]
    write_study(url, "partial", spec=spec("partial", seeds=[0], ablate={"model.fusion": ["sct"]}),
                arms=arms, trials=[], archive_presence=presence)
    page = build_report("partial", url, tmp_path / "report").read_text(encoding="utf-8")
    assert "partial: train 4 of 269,695, validation 0 of 123,723, test 1 of 125,866 official patches present" in page
    assert 'id="partial-archive"' in page
