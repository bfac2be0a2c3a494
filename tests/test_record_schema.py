"""The record schema: what the runner writes is what every reader reads, and studies stored
before the schema had a version still open (``tests/fixtures/legacy_study``: a real study
written by mmvit-study before the change, with what the report read from it then)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from mmvit.errors import StudyError
from mmvit.record_schema import (SCHEMA_VERSION, StoredArm, StoredSearchStudy, StoredStudy, StoredTrial,
                                 write_study, write_trial)

LEGACY = Path(__file__).parent / "fixtures" / "legacy_study"


def projection(record) -> dict:
    """The parts of a StudyRecord ``expected.json`` holds (what the report read before the schema)."""
    def trial(t) -> dict:
        return {"number": t.number, "phase": t.phase, "state": t.state, "arm": t.arm, "seed": t.seed,
                "value": t.value, "test": t.test, "best_epoch": t.best_epoch, "epochs": len(t.history),
                "params": t.params, "parameters": t.parameters, "pruned_at_epoch": t.pruned_at_epoch,
                "seconds": t.seconds, "ap_per_class_test": t.ap_per_class_test}

    out = {"spec_hash": record.spec_hash, "profile": record.profile, "archive_presence": record.archive_presence,
           "class_names": record.class_names, "arms": [asdict(a) for a in record.arms],
           "baseline": record.baseline.name, "planned_seeds": record.planned_seeds, "per_axis": record.per_axis,
           "trials": [trial(t) for t in record.trials], "search": {s.arm: [trial(t) for t in s.trials]
                                                                   for s in record.search}}
    return json.loads(json.dumps(out, default=str))


@pytest.fixture
def legacy(tmp_path) -> str:
    """A copy of the stored legacy study (opening it must not depend on writing to the fixture)."""
    shutil.copy(LEGACY / "optuna.db", tmp_path / "optuna.db")
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def test_the_legacy_fixture_predates_the_schema(legacy):
    study = optuna.load_study(study_name="legacy", storage=legacy)
    trials = study.get_trials() + [t for name in study.user_attrs["search_studies"]
                                   for t in optuna.load_study(study_name=name, storage=legacy).get_trials()]
    assert "schema" not in study.user_attrs and not [t.number for t in trials if "schema" in t.user_attrs]
    assert len(trials) == 8, "4 final and 4 search trials, one of them pruned"


def test_a_study_stored_before_the_schema_reads_as_it_did(legacy):
    from mmvit.report.records import load_study_record

    expected = json.loads((LEGACY / "expected.json").read_text())
    assert projection(load_study_record("legacy", legacy)) == expected


def test_a_study_stored_before_the_schema_resumes_with_nothing_left_to_run(legacy):
    from mmvit.study.runner import remaining_points
    from mmvit.study.spec import load_spec

    from mmvit.storage.connection import open_storage

    spec = load_spec(LEGACY / "legacy.yaml")
    study = optuna.load_study(study_name="legacy", storage=open_storage(legacy))  # as the runner opens it
    todo, elsewhere, done = remaining_points(study, spec.arms, spec.seeds, retry_failed=False)
    assert (todo, elsewhere, done) == ([], [], 4)


def test_running_a_study_stored_before_the_schema_stamps_it_and_changes_nothing_else(legacy):
    from mmvit.report.records import load_study_record
    from mmvit.study.runner import StudyJob, record_identity
    from mmvit.study.spec import load_spec

    spec = load_spec(LEGACY / "legacy.yaml")
    study = optuna.load_study(study_name="legacy", storage=legacy)
    record_identity(study, StudyJob(spec, legacy, "full", None, "unused", spec.arms, driver="a driver"))
    assert StoredStudy.from_study(study).schema == SCHEMA_VERSION
    assert projection(load_study_record("legacy", legacy)) == json.loads((LEGACY / "expected.json").read_text())


def test_status_shows_a_study_stored_before_the_schema(legacy):
    from mmvit.cli import app

    shown = CliRunner().invoke(app, ["status", "legacy", "--storage", legacy], env={"COLUMNS": "200"})
    rows = [line.split() for line in shown.output.splitlines() if "COMPLETE" in line]
    assert shown.exit_code == 0 and sorted((r[0], r[1]) for r in rows) == [
        ("model.fusion=early", "0"), ("model.fusion=early", "1"), ("model.fusion=sct", "0"), ("model.fusion=sct", "1")]


def test_a_record_of_a_newer_schema_is_refused_by_name(legacy, tmp_path):
    from mmvit.cli import app

    study = optuna.load_study(study_name="legacy", storage=legacy)
    study.set_user_attr("schema", SCHEMA_VERSION + 1)
    shown = CliRunner().invoke(app, ["report", "legacy", "--storage", legacy, "--out", str(tmp_path / "report")])
    assert shown.exit_code == 1 and "Traceback" not in shown.output
    message = " ".join(shown.output.split())
    assert f"study 'legacy' was written by a newer mmvit-study (record schema {SCHEMA_VERSION + 1}" in message
    assert "Upgrade mmvit-study" in message


@pytest.mark.parametrize("version", ["1", True, -1, 1.5])
def test_a_schema_no_version_writes_is_refused(version):
    with pytest.raises(StudyError, match="which no mmvit-study writes"):
        StoredTrial.from_attrs({"schema": version, "arm": "a"})


def test_a_trial_record_round_trips_and_holds_only_what_is_set():
    record = StoredTrial.start(arm="S2", arm_index=1, seed=3, phase="final", history=[{"epoch": 1}],
                               test={"ap_macro": 0.5}, error=None)
    attrs = record.to_attrs()
    assert attrs == {"arm": "S2", "arm_index": 1, "seed": 3, "phase": "final", "history": [{"epoch": 1}],
                     "test": {"ap_macro": 0.5}, "schema": SCHEMA_VERSION}
    assert StoredTrial.from_attrs(attrs) == record and record.point == ("S2", 3)
    assert StoredTrial.from_attrs({**attrs, "written_by_a_plugin": 1}) == record, "unknown keys are not the schema's"


def test_a_writer_cannot_write_a_key_the_schema_does_not_have():
    with pytest.raises(TypeError, match="histroy"):
        StoredTrial(histroy=[])  # type: ignore[call-arg]


def test_study_records_round_trip_through_optuna_storage(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage, study_name="s")
    arms = [StoredArm("a", {"x": 1}, {"model.depth": 1}, baseline=True),
            StoredArm("b", {"x": 2}, {"model.depth": 2}, compare_with="a", axis="x")]
    write_study(study, StoredStudy.identity(spec={"study": "s"}, profile="quick", arms=arms, planned_seeds=[0, 1]))
    loaded = StoredStudy.from_study(optuna.load_study(study_name="s", storage=storage))
    assert loaded.arms == arms and loaded.arms_compared and loaded.schema == SCHEMA_VERSION
    assert (loaded.profile, loaded.planned_seeds, loaded.labels) == ("quick", [0, 1], None)
    child = optuna.create_study(storage=storage, study_name="s/search/a")
    write_study(child, StoredSearchStudy.of("s", "a", 0))
    assert StoredSearchStudy.from_study(child) == StoredSearchStudy("s", "a", 0, SCHEMA_VERSION)


def test_write_trial_records_each_set_field_once():
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def set_trial_user_attr(self, trial_id: int, key: str, value) -> None:
            self.calls.append((trial_id, key, value))

    recorder = Recorder()
    write_trial(recorder, 7, StoredTrial(history=[{"epoch": 2}], resumed_from_epoch=2))
    assert recorder.calls == [(7, "history", [{"epoch": 2}]), (7, "resumed_from_epoch", 2)]
