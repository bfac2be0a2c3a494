"""The study runner end to end on the demo archive: grid, storage records, resume, extension."""

from __future__ import annotations

from datetime import datetime, timedelta

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from mmvit.cli import app
from mmvit.errors import StudyError
from mmvit.study.runner import StudyJob, run_study
from mmvit.study.trial import checkpoint_folder, config_key
from mmvit.study.spec import load_spec, parse_spec
from mmvit.storage.shared_path import trial_checkpoints
from mmvit.storage.connection import open_storage, storage_url
from mmvit.train.loop import train_trial

SPEC = """\
study: grid
ablate:
  model.fusion: [early, sct]
seeds: [0, 1]
base:
  model: {patch_size: 30, depth: 1}
resources: {cpu: 1}
"""


GRID = SPEC.replace("  model.fusion: [early, sct]\n", "  model.fusion: [early, sct]\n  model.patch_size: [30, 40]\n") \
    .replace("model: {patch_size: 30, depth: 1}", "model: {depth: 1}")


def _study(tmp_path, name="grid"):
    return optuna.load_study(study_name=name, storage=open_storage(storage_url(name, tmp_path / "studies")))


def _stop_after_first_epoch(job: StudyJob, phase: str, config) -> None:
    """Leave ``config``'s epoch-1 checkpoint in ``phase``'s namespace, as a killed trial does."""

    class Stopped(Exception):
        pass

    def stop(record, _):
        raise Stopped

    with pytest.raises(Stopped), trial_checkpoints(checkpoint_folder(job.checkpoints, phase, config)) as (folder, publish):
        train_trial(config, checkpoint_dir=folder, on_epoch=lambda record, _: (publish(), stop(record, _)))


def test_grid_runs_every_arm_and_seed_once_and_resumes(ray_session, tmp_path, demo_root):
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    kwargs = dict(studies_dir=tmp_path / "studies", data=str(demo_root), profile="quick", reports_dir=tmp_path / "reports")
    first = run_study(path, **kwargs)
    assert (first.planned, first.already_done, first.ran, first.failed) == (8, 0, 8, [])
    trials = _study(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    assert sorted((t.user_attrs["arm"], t.user_attrs["seed"]) for t in trials) == sorted(
        (f"model.fusion={f}, model.patch_size={p}", s) for f in ("early", "sct") for p in (30, 40) for s in (0, 1))
    assert len({t.user_attrs["config_key"] for t in trials}) == 8, "no configuration twice"
    attrs = trials[0].user_attrs
    for key in ("config", "history", "validation", "test", "ap_per_class_test", "parameters",
                "samples_per_s", "peak_memory_mb", "wall_s", "epochs_run", "best_epoch"):
        assert key in attrs, key
    assert attrs["config"]["train"]["epochs"] == 2 and attrs["config"]["model"]["embed_dim"] == 64  # quick
    assert len(attrs["history"]) == 2 and trials[0].value == attrs["validation"]["ap_macro"]
    assert {t.user_attrs["config"]["model"]["patch_size"] for t in trials} == {30, 40}, "the profile never touches an axis"

    page = first.report.read_text()
    assert first.report == tmp_path / "reports" / "grid" / "index.html"
    assert "model.fusion=early, model.patch_size=30" in page and "model.fusion=sct, model.patch_size=40" in page
    assert (first.report.parent / "tables").is_dir()

    again = run_study(path, **kwargs)
    assert (again.already_done, again.ran) == (8, 0), "finished trials never run twice"

    path.write_text(GRID.replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    grown = run_study(path, **kwargs)
    assert (grown.planned, grown.already_done, grown.ran) == (12, 8, 4)

    path.write_text(GRID.replace("depth: 1", "depth: 2"))
    with pytest.raises(StudyError, match="base.model.depth: 1 → 2"):
        run_study(path, **kwargs)


def test_mmvit_data_names_the_archive(monkeypatch, tmp_path, demo_root):
    from mmvit.study.runner import resolve_data

    spec = parse_spec("study: d\n")
    monkeypatch.setenv("MMVIT_DATA", str(demo_root))
    assert resolve_data(None, spec, None) == (str(demo_root.resolve()), str(demo_root.resolve()), "full")
    monkeypatch.setenv("MMVIT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(Exception, match="does not exist"):
        resolve_data(None, spec, None)
    assert resolve_data(str(demo_root), spec, "quick")[2] == "quick", "--data wins over $MMVIT_DATA"


@pytest.mark.parametrize("shared", [None, "file"], ids=["studies-dir", "object-store-uri"])
def test_interrupted_trial_resumes_from_its_checkpoint(ray_session, tmp_path, demo_root, shared):
    """With ``--storage-path`` as a URI (``file://`` here: the same pyarrow code path as s3:// or
    gs://) the checkpoint is published to the store and fetched back by the resumed trial."""
    storage_path = f"file://{tmp_path / 'bucket'}" if shared else None
    path = tmp_path / "grid.yaml"
    path.write_text(SPEC.replace("seeds: [0, 1]", "seeds: [0]").replace("study: grid", "study: killed"))
    kwargs = dict(studies_dir=tmp_path / "studies", data=str(demo_root), profile="quick", reports_dir=tmp_path / "reports",
                  storage_path=storage_path)
    spec = load_spec(path)
    # What a killed driver leaves behind: a RUNNING trial and an epoch-1 checkpoint of its config.
    from mmvit.study.storage import ensure_study

    study, _ = ensure_study(open_storage(storage_url("killed", tmp_path / "studies")), spec,
                            source=str(path), archive=str(demo_root), profile="quick")
    # Started an hour ago, its heartbeats long gone: stale at once (no waiting out the grace period).
    study.add_trial(optuna.trial.FrozenTrial(
        number=-1, trial_id=-1, state=TrialState.RUNNING, value=None, params={}, distributions={},
        datetime_start=datetime.now() - timedelta(hours=1), datetime_complete=None,
        user_attrs={"arm": "model.fusion=sct", "seed": 0}, system_attrs={}, intermediate_values={}))
    root = storage_path or str(tmp_path / "studies")
    job = StudyJob(spec, "", "quick", str(demo_root), f"{root}/killed/checkpoints", spec.arms)
    config = job.resolve(1, 0)

    _stop_after_first_epoch(job, "final", config)

    summary = run_study(path, **kwargs)
    assert (summary.planned, summary.ran, summary.failed) == (2, 2, [])
    trials = _study(tmp_path, "killed").get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["error"].startswith("interrupted")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 and len({t.user_attrs["config_key"] for t in complete}) == 2
    resumed = next(t for t in complete if t.user_attrs["arm"] == "model.fusion=sct")
    assert resumed.user_attrs["resumed_from_epoch"] == 1, "resumed after the epoch-1 checkpoint"
    assert [h["epoch"] for h in resumed.user_attrs["history"]] == [1, 2], "with the epoch before the stop"
    assert resumed.user_attrs["epochs_run"] == 2
    if shared:  # everything of the study but its storage went to the store
        bucket = tmp_path / "bucket" / "killed"
        assert {p.name for p in (bucket / "checkpoints").iterdir()} == {"final"}, "final trials' namespace"
        assert {p.name for p in (bucket / "checkpoints" / "final").iterdir()} == {t.user_attrs["config_key"] for t in complete}
        assert all({p.name for p in (bucket / "checkpoints" / "final" / t.user_attrs["config_key"]).iterdir()}
                   == {"best.pt"} for t in complete), "a finished trial keeps its best weights, on the store too"
        assert any((bucket / "ray").iterdir()), "Ray's results"
        assert not (tmp_path / "studies" / "killed" / "checkpoints").exists()
        assert not (tmp_path / "studies" / "killed" / "ray").exists()


def test_status_shows_the_grid(ray_session, tmp_path, demo_root):
    path = tmp_path / "grid.yaml"
    path.write_text(SPEC.replace("study: grid", "study: shown").replace("seeds: [0, 1]", "seeds: [3]"))
    result = CliRunner().invoke(app, ["run", str(path), "--data", str(demo_root), "--profile", "quick",
                                      "--studies-dir", str(tmp_path / "studies"),
                                      "--reports-dir", str(tmp_path / "reports")])
    assert result.exit_code == 0, result.output
    assert "2 trial(s) planned: 0 already done, 2 run now, 0 failed" in result.output
    shown = CliRunner().invoke(app, ["status", "shown", "--studies-dir", str(tmp_path / "studies")],
                               env={"COLUMNS": "160"})
    assert shown.exit_code == 0 and shown.output.count("COMPLETE") == 2
    import socket

    rows = [line.split() for line in shown.output.splitlines() if "COMPLETE" in line]
    assert [row[-1] for row in rows] == [socket.gethostname()] * 2, "each trial's host"
    missing = CliRunner().invoke(app, ["status", "nothing", "--studies-dir", str(tmp_path / "studies")])
    assert missing.exit_code == 1 and "No study 'nothing'" in missing.output
    assert (tmp_path / "reports" / "shown" / "index.html").is_file(), "run writes the report"
    report = CliRunner().invoke(app, ["report", "shown", "--studies-dir", str(tmp_path / "studies"),
                                      "--out", str(tmp_path / "again")])
    assert report.exit_code == 0 and (tmp_path / "again" / "tables").is_dir(), report.output
    absent = CliRunner().invoke(app, ["report", "nothing", "--studies-dir", str(tmp_path / "studies")])
    assert absent.exit_code == 1 and "No study 'nothing'" in absent.output and "Traceback" not in absent.output


SEARCH_SPEC = """\
study: tuned
ablate:
  model.fusion: [early, sct]
seeds: [0]
base:
  model: {patch_size: 30, depth: 1}
search:
  sampler: tpe
  trials_per_arm: 3
  params:
    train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  asha: {grace_period: 1, reduction_factor: 2}
resources: {cpu: 1}
"""


def test_search_prunes_with_asha_per_arm_and_trains_each_arms_best(ray_session, tmp_path, demo_root):
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    path = tmp_path / "tuned.yaml"
    path.write_text(SEARCH_SPEC)
    storage = open_storage(storage_url("tuned", tmp_path / "studies"))
    # A stored trial of the early arm that no new trial can match at epoch 1: ASHA's rungs are
    # refilled from storage, so every new early trial is stopped at its first rung.
    early = optuna.create_study(storage=storage, study_name="tuned/search/model.fusion=early", direction="maximize")
    early.add_trial(create_trial(params={"train.lr": 1e-3}, distributions={"train.lr": FloatDistribution(1e-4, 1e-2, log=True)},
                                 value=0.99, intermediate_values={1: 0.99, 2: 0.99}))
    # An epoch-1 checkpoint of the early arm's final configuration (its best lr, seed 0) in the
    # search namespace — what a search on a final seed used to leave: the final trial must not use it.
    spec = load_spec(path)
    job = StudyJob(spec, "", "quick", str(demo_root), str(tmp_path / "studies" / "tuned" / "checkpoints"), spec.arms)
    winner = job.resolve(0, 0, {"train.lr": 1e-3})

    _stop_after_first_epoch(job, "search", winner)
    summary = run_study(path, studies_dir=tmp_path / "studies", data=str(demo_root), profile="quick", reports_dir=None)
    assert summary.search_trials == 2 + 3 and summary.failed == []

    new_early = early.get_trials()[1:]
    assert [t.state for t in new_early] == [TrialState.PRUNED] * 2, "ASHA stops are PRUNED, not COMPLETE"
    assert [(t.user_attrs["pruned_at_epoch"], list(t.intermediate_values)) for t in new_early] == [(1, [1])] * 2
    assert [len(t.user_attrs["history"]) for t in new_early] == [1, 1]
    sct = optuna.load_study(study_name="tuned/search/model.fusion=sct", storage=storage).get_trials()
    assert len(sct) == 3 and TrialState.COMPLETE in [t.state for t in sct]
    assert len({t.params["train.lr"] for t in sct}) == 3, "no configuration sampled twice"
    best_sct = max((t for t in sct if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert best_sct.value == best_sct.user_attrs["validation"]["ap_macro"], "value = best validation epoch"

    final = {t.user_attrs["arm"]: t for t in _study(tmp_path, "tuned").get_trials()}
    assert [t.state for t in final.values()] == [TrialState.COMPLETE] * 2
    searched = new_early + sct
    assert {(t.user_attrs["seed"], t.user_attrs["config"]["seed"]) for t in searched} == {(spec.search_seed,) * 2}
    assert spec.search_seed not in spec.seeds
    assert not [t.number for t in searched if {"test", "ap_per_class_test"} & set(t.user_attrs)], "no test metrics"
    assert all(t.user_attrs["seed"] == 0 and "ap_macro" in t.user_attrs["test"] for t in final.values())
    assert final["model.fusion=early"].user_attrs["config"] == winner.model_dump(mode="json")
    assert "resumed_from_epoch" not in final["model.fusion=early"].user_attrs, "trained from scratch"
    assert final["model.fusion=early"].user_attrs["epochs_run"] == 2
    from mmvit.report.records import load_study_record

    record = load_study_record("tuned", storage_url("tuned", tmp_path / "studies"))
    assert all(t.test == {} for s in record.search for t in s.trials) and len(record.trials) == 2
    assert final["model.fusion=early"].user_attrs["search_params"] == {"train.lr": 1e-3}
    assert final["model.fusion=sct"].user_attrs["search_params"] == best_sct.params
    assert final["model.fusion=sct"].user_attrs["config"]["train"]["lr"] == best_sct.params["train.lr"]
    attrs = _study(tmp_path, "tuned").user_attrs
    from mmvit.record_schema import SCHEMA_VERSION

    assert attrs["schema"] == SCHEMA_VERSION and {t.user_attrs["schema"] for t in [*final.values(), *searched]} == {
        SCHEMA_VERSION}, "the study and every trial it starts say which record schema they follow"
    assert attrs["search_studies"] == ["tuned/search/model.fusion=early", "tuned/search/model.fusion=sct"]
    assert [(a["baseline"], a["compare_with"], a["axis"]) for a in attrs["arms"]] == [
        (True, None, None), (False, "model.fusion=early", "model.fusion")], "the first listed fusion is the reference"

    search_folders = {p.name for p in (tmp_path / "studies" / "tuned" / "checkpoints" / "search").iterdir()}
    assert search_folders == {config_key(winner)}, "the searches are done: only the folder no trial of them wrote is left"

    again = run_study(path, studies_dir=tmp_path / "studies", data=str(demo_root), profile="quick", reports_dir=None)
    assert (again.search_trials, again.ran) == (0, 0), "a finished search is not searched again"


def test_a_failing_trial_is_recorded_and_the_study_goes_on(ray_session, tmp_path):
    from mmvit.data.archive import open_archive
    from mmvit.data.demo import write_demo_archive

    root = write_demo_archive(tmp_path / "archive", patches=60, seed=3)
    s1_file = next(root.glob("BigEarthNet-S1-v1.0/*/*_VH.tif"))
    good = s1_file.read_bytes()
    s1_file.write_bytes(b"not a GeoTIFF")  # a corrupt patch: only the S1 arm reads it
    path = tmp_path / "fail.yaml"
    path.write_text("study: fail\nablate:\n  data.modalities: [s2, s1]\nbase:\n  model: {fusion: vit, patch_size: 30, "
                    "depth: 1}\nresources: {cpu: 1}\n")
    kwargs = dict(studies_dir=tmp_path / "studies", data=str(root), profile="quick", reports_dir=None)
    summary = run_study(path, **kwargs)
    assert summary.ran == 2 and len(summary.failed) == 1
    assert summary.failed[0].startswith("data.modalities=s1 seed 0:") and s1_file.name in summary.failed[0]
    states = {t.user_attrs["arm"]: t.state for t in _study(tmp_path, "fail").get_trials()}
    assert states == {"data.modalities=s2": TrialState.COMPLETE, "data.modalities=s1": TrialState.FAIL}

    s1_file.write_bytes(good)
    assert run_study(path, **kwargs).ran == 0, "a failed trial waits for --retry-failed"
    retried = run_study(path, **kwargs, retry_failed=True)
    assert (retried.ran, retried.failed) == (1, [])
    assert open_archive(root).root == root


def test_a_trial_that_fails_before_reaching_storage_is_reported_not_retried_forever(ray_session, tmp_path,
                                                                                      demo_root, monkeypatch):
    """A worker that cannot reach the database leaves no trial behind: the driver must neither
    loop on the point nor stay silent about it."""
    import mmvit.study.runner as runner

    def unreachable(config, job):  # pickled by value: runs in the Ray worker as it is
        raise ConnectionError("could not connect to server: dbhost:5432")

    monkeypatch.setattr(runner, "run_trial", unreachable)
    path = tmp_path / "grid.yaml"
    path.write_text(SPEC.replace("study: grid", "study: unreachable").replace("seeds: [0, 1]", "seeds: [0]"))
    summary = run_study(path, studies_dir=tmp_path / "studies", data=str(demo_root), profile="quick",
                        reports_dir=None)
    assert summary.ran == 0 and len(summary.failed) == 2, summary
    assert all("ConnectionError: could not connect to server: dbhost:5432 (before the trial reached the study "
               "storage" in line for line in summary.failed), summary.failed
