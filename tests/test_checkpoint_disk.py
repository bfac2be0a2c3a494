"""Disk that does not fill: a finished trial keeps its best weights only (its resume state goes once
storage holds its results), an arm's search checkpoints go once its search is complete in storage,
``status`` and the report say what the checkpoints hold, ``validate`` estimates it."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from mmvit.cli import app
from mmvit.record_schema import StoredStudy, write_study
from mmvit.storage.connection import open_storage, storage_url
from mmvit.storage.disk import disk_usage, format_bytes
from mmvit.study import checkpoints
from mmvit.study.spec import parse_spec
from mmvit.study.trial import StudyJob, checkpoint_folder, config_key

runner = CliRunner()

TINY = """\
study: {name}
ablate:
  model.fusion: [early, sct]
seeds: [0]
base:
  model: {{patch_size: 30, depth: 1, embed_dim: 32, num_heads: 2}}
  train: {{epochs: 2, batch_size: 32}}
  data: {{num_workers: 0}}
resources: {{cpu: 1}}
"""


def _sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def test_the_names_are_the_training_loops():
    from mmvit.train import loop

    assert (checkpoints.RESUME_STATE, checkpoints.BEST_WEIGHTS) == (loop.CHECKPOINT, loop.BEST_WEIGHTS)


# --- (a) a finished final trial keeps best.pt; its resume state goes after the tell -------------------

class Crash(Exception):
    """The process dies as storage is told COMPLETE."""


@pytest.fixture
def final_trial(tmp_path, demo_root, monkeypatch):
    """Runs one final trial's training and recording in this process (what a Ray worker runs), with
    the tell observed: returns (run, study, the folder's files at each tell); ``run(root, crash=True)``
    dies at the tell."""
    import ray.tune

    from mmvit.study.claims import claim
    from mmvit.study.storage import ensure_study
    from mmvit.study.trial import _train_and_record

    monkeypatch.setattr(ray.tune, "report", lambda metrics: None)  # no Tune session here
    spec = parse_spec(TINY.format(name="kept"))
    url = storage_url("kept", tmp_path / "studies")
    storage = open_storage(url)
    study, _ = ensure_study(storage, spec, source="test", archive=str(demo_root), profile="full")
    tells: list[set[str]] = []

    def run(root: str, crash: bool = False) -> int:
        job = StudyJob(spec, url, "full", str(demo_root), root, spec.arms)
        config = job.resolve(1, 0)
        local = Path(checkpoint_folder(root, "final", config).removeprefix("file://"))
        real_tell = type(storage).set_trial_state_values

        def tell(trial_id, state, values=None):
            tells.append(set(_sizes(local)))  # what the folder holds at the moment storage hears COMPLETE
            if crash:
                raise Crash
            return real_tell(storage, trial_id, state, values)

        monkeypatch.setattr(storage, "set_trial_state_values", tell)
        trial_id = claim(study, {"arm": spec.arms[1].name, "seed": 0, "config_key": config_key(config)})
        try:
            _train_and_record(config, job, storage, study, trial_id)
        finally:
            monkeypatch.delattr(storage, "set_trial_state_values")
        return trial_id

    return run, study, tells


@pytest.mark.parametrize("uri", [False, True], ids=["folder", "object-store-uri"])
def test_a_finished_trial_keeps_its_best_weights_and_drops_its_resume_state_after_the_tell(final_trial, tmp_path,
                                                                                          uri):
    run, study, tells = final_trial
    root = f"file://{tmp_path}/bucket/kept/checkpoints" if uri else str(tmp_path / "studies" / "kept" / "checkpoints")
    trial_id = run(root)
    (folder,) = Path(root.removeprefix("file://"), "final").iterdir()
    trial = optuna.load_study(study_name="kept", storage=study._storage).get_trials()[0]
    assert trial._trial_id == trial_id and trial.state == TrialState.COMPLETE
    assert trial.value == trial.user_attrs["validation"]["ap_macro"] and trial.user_attrs["epochs_run"] == 2
    assert tells == [{"best.pt", "last.pt"}], "the resume state is still there when storage hears COMPLETE"
    assert _sizes(folder) == {"best.pt": trial.user_attrs["checkpoint_bytes"]}, "after it, best.pt only"


def test_a_crash_between_the_results_and_the_tell_still_resumes(final_trial, tmp_path):
    run, study, _ = final_trial
    root = str(tmp_path / "studies" / "kept" / "checkpoints")
    with pytest.raises(Crash):
        run(root, crash=True)
    (folder,) = Path(root, "final").iterdir()
    assert set(_sizes(folder)) == {"best.pt", "last.pt"}, "no tell, so the resume state stays"
    crashed = study.get_trials()[0]
    assert crashed.state == TrialState.RUNNING and "validation" in crashed.user_attrs
    study._storage.set_trial_state_values(crashed._trial_id, TrialState.FAIL)  # as the next run marks it (stale)
    run(root)
    rerun = study.get_trials()[1]
    assert rerun.state == TrialState.COMPLETE and rerun.user_attrs["resumed_from_epoch"] == 2, \
        "the re-run found every epoch in last.pt"
    assert set(_sizes(folder)) == {"best.pt"}


# --- (b) an arm's search checkpoints go when its search is complete in storage -------------------------

SEARCH = TINY.replace("resources:", """search:
  sampler: random
  trials_per_arm: 3
  params:
    train.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
resources:""")


def _search_trial(study: optuna.Study, state: TrialState, key: str, root: Path) -> None:
    study.add_trial(create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                                 user_attrs={"config_key": key, "phase": "search"}))
    folder = root / "search" / key
    folder.mkdir(parents=True)
    (folder / "best.pt").write_bytes(b"b" * 1000)
    (folder / "last.pt").write_bytes(b"l" * 3000)


@pytest.mark.parametrize("keep", [False, True], ids=["removed", "keep-checkpoints"])
def test_search_checkpoints_go_only_for_arms_whose_search_is_complete(tmp_path, keep):
    from mmvit.study.runner import StudyDriver
    from mmvit.study.search import search_study_name

    spec = parse_spec(SEARCH.format(name="tidy"))
    url = f"sqlite:///{tmp_path / 'tidy.db'}"
    root = tmp_path / "checkpoints"
    done, busy = (optuna.create_study(storage=url, study_name=search_study_name(spec, arm.name)) for arm in spec.arms)
    for key, state in (("a1", TrialState.COMPLETE), ("a2", TrialState.PRUNED), ("a3", TrialState.FAIL),
                       ("a4", TrialState.COMPLETE)):  # a3 failed for real: its budget is used, a retry resumes it
        _search_trial(done, state, key, root)
    for key, state in (("b1", TrialState.COMPLETE), ("b2", TrialState.COMPLETE), ("b3", TrialState.RUNNING)):
        _search_trial(busy, state, key, root)  # b3 runs (maybe in another driver): the arm is not done
    job = StudyJob(spec, url, "full", None, str(root), spec.arms)
    driver = StudyDriver(job, None, None, retry_failed=False, verbose=False, keep_checkpoints=keep)
    driver.tidy_searches()
    left = {p.name: set(_sizes(p)) for p in (root / "search").iterdir()}
    finished_a = {"best.pt"} if keep else None
    expected = {"a3": {"best.pt", "last.pt"}, **{k: {"best.pt", "last.pt"} for k in ("b1", "b2", "b3")}}
    if keep:
        expected |= {"a1": finished_a, "a2": finished_a, "a4": finished_a}
    assert left == expected
    assert driver.tidied == {0}, "the arm with a running trial is left for a later pass"


# --- the sweep and the record in storage -------------------------------------------------------------

def test_a_run_sweeps_resume_states_finished_trials_left_and_records_the_disk(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs={"config_key": "done"}))
    study.add_trial(create_trial(state=TrialState.RUNNING, user_attrs={"config_key": "running"}))
    root = tmp_path / "checkpoints"
    for key in ("done", "running", "unknown"):
        (root / "final" / key).mkdir(parents=True)
        (root / "final" / key / "best.pt").write_bytes(b"b" * 1234)
        (root / "final" / key / "last.pt").write_bytes(b"l" * 4321)
    usage = checkpoints.record_disk(study, [], str(root))
    assert set(_sizes(root / "final" / "done")) == {"best.pt"}, "a crash between tell and removal left it"
    assert set(_sizes(root / "final" / "running")) == {"best.pt", "last.pt"}, "a running trial's resume state stays"
    assert set(_sizes(root / "final" / "unknown")) == {"best.pt", "last.pt"}, "no finished trial names it"
    recorded = StoredStudy.from_study(optuna.load_study(study_name="s", storage=url)).checkpoint_disk
    on_disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert (recorded["bytes"], recorded["folders"], recorded["path"]) == (on_disk, 3, str(root)) == (
        usage.bytes, usage.folders, usage.path)
    assert on_disk == 3 * 1234 + 2 * 4321


def test_disk_usage_reads_an_object_store_uri_and_removes_there(tmp_path):
    from mmvit.storage.disk import remove_files, remove_folder

    folder = tmp_path / "bucket" / "final" / "k"
    folder.mkdir(parents=True)
    (folder / "best.pt").write_bytes(b"x" * 10)
    (folder / "last.pt").write_bytes(b"x" * 30)
    uri = f"file://{tmp_path}/bucket"
    assert (disk_usage(uri).bytes, disk_usage(uri).folders) == (40, 1)
    assert remove_files(f"{uri}/final/k", ["last.pt", "absent.pt"]) == 30 and _sizes(folder) == {"best.pt": 10}
    assert remove_folder(f"{uri}/final/k") and not folder.exists() and not remove_folder(f"{uri}/final/k")
    assert disk_usage(f"{uri}/nothing").bytes == 0


@pytest.mark.parametrize("count, text", [(0, "0 B"), (999, "999 B"), (4_812_000, "4.8 MB"), (14_400_000, "14.4 MB"),
                                         (126_000_000, "126 MB"), (2_200_000_000, "2.2 GB")])
def test_sizes_read_as_the_issue_writes_them(count, text):
    assert format_bytes(count) == text


# --- (c) status measures the checkpoints --------------------------------------------------------------

def _checkpoint_line(output: str) -> tuple[float, int, str]:
    match = re.search(r"checkpoints: ([\d.]+) (B|kB|MB|GB) in (\d+) trial folders? \((.+)\)", output)
    assert match, output
    scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[match.group(2)]
    return float(match.group(1)) * scale, int(match.group(3)), match.group(4)


def test_status_measures_the_checkpoints_on_disk(tmp_path):
    studies = tmp_path / "studies"
    optuna.create_study(storage=storage_url("disk", studies), study_name="disk")
    root = studies / "disk" / "checkpoints"
    sizes = {("final", "k1"): 1_234_567, ("final", "k2"): 2_345_678, ("search", "k3"): 345_678}
    for (phase, key), size in sizes.items():
        (root / phase / key).mkdir(parents=True)
        (root / phase / key / "best.pt").write_bytes(b"\0" * size)
    shown = runner.invoke(app, ["status", "disk", "--studies-dir", str(studies)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    measured, folders, path = _checkpoint_line(shown.output)
    assert folders == 3 and path == str(root.resolve())
    assert abs(measured - sum(sizes.values())) <= 0.05e6, (measured, sum(sizes.values()))

    (root / "final" / "k1" / "last.pt").write_bytes(b"\0" * 3_000_000)  # measured now, not recorded
    again, folders, _ = _checkpoint_line(runner.invoke(app, ["status", "disk", "--studies-dir", str(studies)]).output)
    assert abs(again - (sum(sizes.values()) + 3_000_000)) <= 0.05e6 and folders == 3


def test_status_reads_the_recorded_store_and_says_when_it_is_out_of_reach(tmp_path):
    studies = tmp_path / "studies"
    study = optuna.create_study(storage=storage_url("far", studies), study_name="far")
    bucket = tmp_path / "bucket" / "far" / "checkpoints" / "final" / "k"
    bucket.mkdir(parents=True)
    (bucket / "best.pt").write_bytes(b"\0" * 7_000_000)
    write_study(study, StoredStudy(checkpoint_disk={"path": f"file://{tmp_path}/bucket/far/checkpoints",
                                                    "bytes": 9_000_000, "folders": 1, "measured": "2026-12-08T10:00:00"}))
    measured, folders, path = _checkpoint_line(runner.invoke(app, ["status", "far", "--studies-dir", str(studies)]).output)
    assert (measured, folders, path) == (7_000_000, 1, f"file://{tmp_path}/bucket/far/checkpoints"), "live, not recorded"

    write_study(study, StoredStudy(checkpoint_disk={"path": "nosuch://bucket/far/checkpoints", "bytes": 1_200_000_000,
                                                    "folders": 36, "measured": "2026-12-08T10:00:00"}))
    shown = runner.invoke(app, ["status", "far", "--studies-dir", str(studies)], env={"COLUMNS": "300"})
    text = " ".join(shown.output.split())
    assert shown.exit_code == 0 and "Traceback" not in text, shown.output
    assert "checkpoints: nosuch://bucket/far/checkpoints is not reachable from this machine (" in text
    assert "the last run measured 1.2 GB in 36 trial folders (2026-12-08 10:00:00)" in text


# --- the report shows what the runner recorded -------------------------------------------------------

def test_the_report_shows_the_recorded_checkpoint_disk_and_the_bytes_per_trial(tmp_path):
    from dataclasses import replace

    from mmvit.record_schema import StoredTrial
    from mmvit.report import build_report
    from tests.report_fixtures import final_trial, spec, write_study as write_fixture

    url = f"sqlite:///{tmp_path}/r.db"
    trials = []
    for seed, kept in ((0, 4_000_000), (1, 6_000_000)):
        trial = final_trial(arm="model.fusion=sct", arm_index=0, seed=seed, curve=[0.4, 0.5])
        attrs = replace(StoredTrial.from_trial(trial), checkpoint_bytes=kept).to_attrs()
        trials.append(create_trial(state=TrialState.COMPLETE, value=trial.value, user_attrs=attrs))
    arms = [{"name": "model.fusion=sct", "labels": {"model.fusion": "sct"}, "baseline": True}]
    write_fixture(url, "r", spec=spec("r", seeds=[0, 1], ablate={"model.fusion": ["sct"]}), arms=arms, trials=trials)
    write_study(optuna.load_study(study_name="r", storage=url), StoredStudy(checkpoint_disk={
        "path": "s3://bucket/r/checkpoints", "bytes": 1_234_000_000, "folders": 36, "measured": "2026-12-08T10:00:00"}))
    page = build_report("r", url, tmp_path / "report").read_text(encoding="utf-8")
    assert ("<dt>Checkpoints on disk</dt><dd>1.2 GB in 36 trial folders (s3://bucket/r/checkpoints), measured "
            "2026-12-08 10:00 by the last run; 5.0 MB per finished final trial (its best weights)</dd>") in page


def test_a_study_recorded_before_the_disk_figure_reports_it_as_not_recorded(tmp_path):
    from mmvit.report import build_report
    from tests.report_fixtures import spec, write_study as write_fixture

    url = f"sqlite:///{tmp_path}/old.db"
    write_fixture(url, "old", spec=spec("old", seeds=[0], ablate={"model.fusion": ["sct"]}),
                  arms=[{"name": "model.fusion=sct", "labels": {}, "baseline": True}], trials=[])
    page = build_report("old", url, tmp_path / "report").read_text(encoding="utf-8")
    assert "<dt>Checkpoints on disk</dt><dd>not recorded (a study run before mmvit-study recorded it;" in page


# --- (d) validate estimates the disk from the plan's parameter counts --------------------------------

def _estimate(output: str) -> tuple[float, int, float]:
    text = " ".join(output.split())
    match = re.search(r"disk: ≈ ([\d.]+) (kB|MB|GB) of checkpoints kept \((\d+) final trials × ([\d.]+) (kB|MB) best "
                      r"weights\); ([\d.]+) (kB|MB|GB) more per running trial", text)
    assert match, text
    unit = {"kB": 1e3, "MB": 1e6, "GB": 1e9}
    return (float(match.group(1)) * unit[match.group(2)], int(match.group(3)),
            float(match.group(6)) * unit[match.group(7)])


def test_validate_estimates_the_checkpoint_disk_from_the_parameter_counts(tmp_path):
    from mmvit.study.plan import plan_study
    from mmvit.study.spec import load_spec

    estimates, parameters = {}, {}
    for width in (64, 128):
        path = tmp_path / f"w{width}.yaml"
        path.write_text(f"study: w{width}\nablate:\n  model.fusion: [sct]\nseeds: [0, 1, 2]\n"
                        f"base:\n  model: {{embed_dim: {width}, num_heads: 4, depth: 2}}\n")
        result = runner.invoke(app, ["validate", str(path), "--profile", "full"])
        assert result.exit_code == 0, result.output
        estimates[width] = _estimate(result.output)
        parameters[width] = plan_study(load_spec(path), profile="full").arms[0].parameters
    for width, (kept, trials, running) in estimates.items():
        assert trials == 3
        assert abs(kept - 3 * parameters[width] * 4) <= 0.05 * kept, "3 trials × parameters × 4 bytes"
        assert abs(running - 3 * parameters[width] * 4) <= 0.05 * running, "weights + Adam's two moments"
    ratio = estimates[128][0] / estimates[64][0]
    assert abs(ratio - parameters[128] / parameters[64]) < 0.1 and ratio > 2.5, "scales with the parameters"


def test_validate_counts_search_trials_while_they_run_or_for_good_with_keep(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SEARCH.format(name="s").replace("trials_per_arm: 3", "trials_per_arm: 10"))
    plain = " ".join(runner.invoke(app, ["validate", str(path), "--profile", "full"]).output.split())
    kept = " ".join(runner.invoke(app, ["validate", str(path), "--profile", "full", "--keep-checkpoints"]).output.split())
    assert "(2 final trials ×" in plain and "more while the searches run (20 search trials' best weights" in plain
    assert "(2 final + 20 search trials ×" in kept and "while the searches run" not in kept
    def total(text: str) -> float:
        value, unit = re.search(r"disk: ≈ ([\d.]+) (kB|MB|GB)", text).groups()
        return float(value) * {"kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]

    assert total(kept) == pytest.approx(11 * total(plain), rel=0.05), "each arm: 1 + 10 trials' best weights, not 1"


def test_the_estimate_is_what_the_training_loop_writes(tmp_path):
    """best.pt ≈ parameters × 4 bytes, last.pt ≈ 3× that: the sizes of real files."""
    import torch

    from mmvit.config import TrialConfig
    from mmvit.data.bands import input_channels
    from mmvit.train import loop

    config = TrialConfig.model_validate({"model": {"fusion": "sct", "embed_dim": 64, "num_heads": 4, "depth": 2},
                                         "data": {"modalities": "s2+s1"}})
    model = loop.build_model(config, input_channels("s2+s1"))
    optimiser = loop.make_optimiser(model, config, torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimiser.step()
    loop._atomic_save({"model": model.state_dict(), "epoch": 1}, tmp_path / loop.BEST_WEIGHTS)
    loop._save(tmp_path, model, optimiser, torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 1.0),
               loop._Progress())
    parameters = sum(p.numel() for p in model.parameters())
    best, last = (tmp_path / loop.BEST_WEIGHTS).stat().st_size, (tmp_path / loop.CHECKPOINT).stat().st_size
    assert abs(best - parameters * checkpoints.BYTES_PER_PARAMETER) <= 0.05 * best
    assert abs(last - checkpoints.RESUME_FACTOR * parameters * checkpoints.BYTES_PER_PARAMETER) <= 0.05 * last


# --- end to end, through Ray ----------------------------------------------------------------------------

@pytest.mark.slow  # two small searched studies through Ray (~1 min on 2 cores)
@pytest.mark.parametrize("keep", [False, True], ids=["removed", "keep-checkpoints"])
def test_a_searched_study_keeps_the_finals_best_weights_only(ray_session, tmp_path, demo_root, keep):
    from mmvit.study.runner import run_study

    path = tmp_path / "e2e.yaml"
    path.write_text(SEARCH.format(name="e2e").replace("trials_per_arm: 3", "trials_per_arm: 2"))
    summary = run_study(path, studies_dir=tmp_path / "studies", data=str(demo_root), profile="full",
                        reports_dir=None, keep_checkpoints=keep)
    assert summary.failed == [] and summary.search_trials == 4 and summary.ran == 2
    url = storage_url("e2e", tmp_path / "studies")
    study = optuna.load_study(study_name="e2e", storage=url)
    root = tmp_path / "studies" / "e2e" / "checkpoints"
    finals = {t.user_attrs["config_key"]: t.user_attrs["checkpoint_bytes"] for t in study.get_trials()}
    assert {p.name: _sizes(p) for p in (root / "final").iterdir()} == {k: {"best.pt": b} for k, b in finals.items()}
    searches = [t for arm in ("early", "sct") for t in optuna.load_study(
        study_name=f"e2e/search/model.fusion={arm}", storage=url).get_trials()]
    assert {t.state for t in searches} <= {TrialState.COMPLETE, TrialState.PRUNED} and len(searches) == 4
    left = {p.name: set(_sizes(p)) for p in (root / "search").iterdir()} if (root / "search").exists() else {}
    assert left == ({t.user_attrs["config_key"]: {"best.pt"} for t in searches} if keep else {})
    recorded = StoredStudy.from_study(study).checkpoint_disk
    assert recorded["bytes"] == sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert recorded["folders"] == 2 + (4 if keep else 0)
