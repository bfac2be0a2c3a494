"""Scale-out on this CPU box with real Ray parts: logical GPUs, resource checks."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from mmvit.errors import StudyError
from mmvit.study.runner import run_study
from mmvit.study.storage import open_storage, storage_url

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
    starts = [t.datetime_start for t in trials]
    ends = [t.datetime_complete for t in trials]
    assert max(starts) < min(ends), "all four ran at once"


def test_a_request_the_cluster_cannot_meet_is_refused_before_it_starts(two_logical_gpus, tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(GPU_SPEC.replace("gpu: 0.5", "gpu: 3").replace("study: gpus", "study: big"))
    with pytest.raises(StudyError, match=r"asks for 3 GPU \(resources.gpu\), but no node .* \(2 GPU in all\)"):
        run_study(path, studies_dir=tmp_path / "studies", profile="quick", reports_dir=None)


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
