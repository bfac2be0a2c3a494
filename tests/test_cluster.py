"""Scale-out on this CPU box with real Ray parts: logical GPUs, resource checks."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from mmvit.errors import SpecError, StudyError
from mmvit.study.runner import run_study, trial_resources
from mmvit.study.spec import parse_spec
from mmvit.storage.connection import open_storage, storage_url

GPU_SPEC = """\
study: gpus
ablate:
  model.fusion: [early, sct, modality_token, channel_token]
base:
  model: {patch_size: 30, depth: 1, embed_dim: 32, num_heads: 2}
  train: {epochs: 3, batch_size: 32}
  data: {num_workers: 0}
resources: {cpu: 0.5, gpu: 0.5}
"""


@pytest.fixture
def two_logical_gpus():
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=2, num_gpus=2,
             object_store_memory=100 * 2**20, logging_level="ERROR")
    yield
    ray.shutdown()


def test_fractional_gpu_trials_share_the_gpus_ray_assigns(two_logical_gpus, tmp_path, demo_root):
    path = tmp_path / "gpus.yaml"
    path.write_text(GPU_SPEC)
    summary = run_study(path, studies_dir=tmp_path / "studies", data=str(demo_root), profile="full", reports_dir=None)
    assert summary.failed == [] and summary.ran == 4
    trials = optuna.load_study(study_name="gpus", storage=open_storage(storage_url("gpus", tmp_path / "studies"))
                               ).get_trials(states=(TrialState.COMPLETE,))
    ids = [t.user_attrs["gpu_ids"] for t in trials]
    assert all(len(i) == 1 for i in ids), ids
    assert sorted(i[0] for i in ids) == ["0", "0", "1", "1"], "two trials per logical GPU"
    assert all(t.user_attrs["cuda_visible_devices"] == t.user_attrs["gpu_ids"][0] for t in trials)
    assert all(t.user_attrs["resources"] == {"cpu": 0.5, "gpu": 0.5} for t in trials), "the file's resources"
    starts = [t.datetime_start for t in trials]
    ends = [t.datetime_complete for t in trials]
    assert max(starts) < min(ends), "all four ran at once"


def test_a_request_the_cluster_cannot_meet_is_refused_before_it_starts(two_logical_gpus, tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(GPU_SPEC.replace("gpu: 0.5", "gpu: 3").replace("study: gpus", "study: big"))
    with pytest.raises(StudyError, match=r"asks for 3 GPU \(--gpus-per-trial or resources.gpu\), but no node .* "
                                         r"\(2 GPU in all\)"):
        run_study(path, studies_dir=tmp_path / "studies", profile="quick", reports_dir=None)


def test_unsaid_resources_are_a_gpu_per_trial_where_ray_sees_gpus(two_logical_gpus):
    """Ray's own view of the (logical) GPUs decides: one each, or two per GPU with 0.5."""
    from mmvit.study.runner import concurrency
    from mmvit.study.trial import StudyJob

    spec = parse_spec("study: r\n", check_models=False)
    auto, halves = trial_resources(spec), trial_resources(spec, gpus=0.5)
    assert (auto, halves) == ({"cpu": 1.0, "gpu": 1.0}, {"cpu": 0.5, "gpu": 0.5}), "2 CPUs shared by the GPU slots"
    assert [concurrency(StudyJob(spec, "", "full", None, "", resources=r)) for r in (auto, halves)] == [2, 4]


@pytest.mark.slow
def test_a_study_that_names_no_resources_gets_a_gpu_per_trial_and_may_resume_with_others(
        two_logical_gpus, tmp_path, demo_root):
    """Resources are chosen when running, not part of the study: no `resources:` on a cluster with
    GPUs is one GPU per trial; a resumed study may ask for others (the file's, or --gpus-per-trial)."""
    path = tmp_path / "gpus.yaml"
    text = (GPU_SPEC.replace("resources: {cpu: 0.5, gpu: 0.5}\n", "").replace("epochs: 3", "epochs: 1")
            .replace("[early, sct, modality_token, channel_token]", "[early, sct]"))
    path.write_text(text)
    kwargs = dict(studies_dir=tmp_path / "studies", data=str(demo_root), profile="full", reports_dir=None)
    first = run_study(path, **kwargs)
    assert first.failed == [] and first.ran == 2
    study = optuna.load_study(study_name="gpus", storage=open_storage(storage_url("gpus", tmp_path / "studies")))
    whole = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.user_attrs["resources"] for t in whole] == [{"cpu": 1.0, "gpu": 1.0}] * 2, "a GPU and a fair CPU share"
    assert sorted(t.user_attrs["gpu_ids"][0] for t in whole) == ["0", "1"] and all(
        len(t.user_attrs["gpu_ids"]) == 1 for t in whole)

    # Other resources in the file and on the command line, and one more seed: extended, not refused.
    path.write_text(text + "seeds: [0, 1]\nresources: {cpu: 0.5, gpu: 0}\n")
    second = run_study(path, **kwargs, gpus_per_trial=0.5)
    assert (second.failed, second.already_done, second.ran) == ([], 2, 2)
    halves = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs["seed"] == 1]
    assert [t.user_attrs["resources"] for t in halves] == [{"cpu": 0.5, "gpu": 0.5}] * 2, "the option beats the file"
    assert all(len(t.user_attrs["gpu_ids"]) == 1 for t in halves)


@pytest.mark.parametrize("file, cpus, gpus, nodes, expected", [
    ("", None, None, [{"CPU": 2}], (1, 0)),                              # CPU-only: the cores run trials side by side
    ("", None, None, [{"CPU": 16, "GPU": 2}], (8, 1)),                   # a GPU each, a fair share of the CPUs
    ("", None, 0.5, [{"CPU": 16, "GPU": 2}], (4, 0.5)),
    ("", None, 0.5, [{"CPU": 2, "GPU": 2}], (0.5, 0.5)),                 # fewer cores than GPU slots: a fraction
    ("", None, None, [{"CPU": 16, "GPU": 4}, {"CPU": 8, "GPU": 4}, {"CPU": 64}], (2, 1)),  # the tightest GPU node
    ("resources: {cpu: 3, gpu: 0}\n", None, None, [{"CPU": 16, "GPU": 2}], (3, 0)),  # the file's defaults
    ("resources: {cpu: 3, gpu: 0}\n", 2, 1, [{"CPU": 16, "GPU": 2}], (2, 1)),        # the options win
    ("resources: {gpu: 1}\n", None, 0, [{"CPU": 16, "GPU": 2}], (1, 0)),
])
def test_trial_resources_are_chosen_at_run_time(monkeypatch, file, cpus, gpus, nodes, expected):
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": n} for n in nodes])
    spec = parse_spec(f"study: r\n{file}", check_models=False)
    assert trial_resources(spec, cpus, gpus) == {"cpu": expected[0], "gpu": expected[1]}


def test_bad_per_trial_resources_are_refused(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2}}])
    spec = parse_spec("study: r\n", check_models=False)
    with pytest.raises(SpecError, match="--cpus-per-trial must be > 0, but got 0"):
        trial_resources(spec, 0, None)
    with pytest.raises(SpecError, match="--gpus-per-trial must be >= 0, but got -1"):
        trial_resources(spec, None, -1)


def test_run_hands_the_per_trial_options_to_the_runner(monkeypatch, tmp_path):
    from mmvit.cli import app
    from mmvit.study import runner

    seen = {}

    def fake_run_study(path, **kwargs):
        seen.update(kwargs)
        return runner.RunSummary(0, 0, 0, [], 0.0)

    monkeypatch.setattr(runner, "run_study", fake_run_study)
    path = tmp_path / "gpus.yaml"
    path.write_text(GPU_SPEC)
    result = CliRunner().invoke(app, ["run", str(path), "--studies-dir", str(tmp_path / "studies"),
                                      "--gpus-per-trial", "0.5", "--cpus-per-trial", "2"])
    assert result.exit_code == 0, result.output
    assert (seen["gpus_per_trial"], seen["cpus_per_trial"]) == (0.5, 2.0)
    CliRunner().invoke(app, ["run", str(path), "--studies-dir", str(tmp_path / "studies")])
    assert (seen["gpus_per_trial"], seen["cpus_per_trial"]) == (None, None), "unsaid: decided at run time"


@pytest.mark.parametrize("address, env, token_file, expected", [
    ("10.0.0.1:6379", {}, True, "token"),          # the head's token copied here: send it
    ("10.0.0.1:6379", {"RAY_AUTH_TOKEN": "t"}, False, "token"),
    ("10.0.0.1:6379", {}, False, None),            # nothing to send: leave Ray's default
    ("10.0.0.1:6379", {"RAY_AUTH_MODE": "disabled"}, True, "disabled"),  # the user's choice wins
    ("auto", {}, True, None),                      # auto finds the local cluster's token itself
    (None, {}, True, None),
])
def test_an_explicit_address_sends_the_cluster_token(monkeypatch, tmp_path, address, env, token_file, expected):
    import os

    from mmvit.study.cluster import use_cluster_token

    # A private copy of the environment: the RAY_AUTH_MODE it sets must not reach later tests'
    # Ray clusters (their GCS would demand a token their drivers do not send).
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    if token_file:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("secret")
    use_cluster_token(address)
    assert os.environ.get("RAY_AUTH_MODE") == expected
