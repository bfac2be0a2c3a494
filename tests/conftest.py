"""Shared fixtures: the real example patches, a small demo archive, and a v2 copy of it."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

# Tests never touch the user's caches.
os.environ.setdefault("MMVIT_CACHE_DIR", str(Path(__file__).parent.parent / ".ci-cache" / "cache"))
os.environ.setdefault("MMVIT_DEMO_DIR", str(Path(__file__).parent.parent / ".ci-cache" / "demo"))
warnings.filterwarnings("ignore", category=DeprecationWarning, module="bigearthnet_common")
# Heartbeats every 2 s (stale after 8 s): a resume after a kill takes the dead trials over sooner.
os.environ.setdefault("MMVIT_HEARTBEAT_S", "2")

DEMO_PATCHES = 40

MECHANICS_QUICK_PROFILE = {"train.epochs": 2, "train.batch_size": 32, "train.warmup_epochs": 0,
                           "model.embed_dim": 64, "model.num_heads": 4, "data.num_workers": 0}
"""The quick profile's shape at a tenth of its budget. The real one is sized for models to learn
the 600-patch demo (minutes per study); tests of the runner's mechanics (resume, claims, search,
resources) on the 40-patch demo need trials, not learning. Tests marked ``real_profiles`` (the
known-answer check, the library's quick runs) get the real one."""


@pytest.fixture(autouse=True)
def mechanics_quick_profile(request, monkeypatch):
    """The driver fixes the profile into each StudyJob, so this reaches Ray's workers too."""
    if request.node.get_closest_marker("real_profiles") is None:
        from mmvit.study import trial

        monkeypatch.setitem(trial.PROFILES, "quick", MECHANICS_QUICK_PROFILE)


@pytest.fixture(scope="session")
def example_root(tmp_path_factory) -> Path:
    """The six real S1+S2 patches shipped by bigearthnet-common, as a v1 archive root."""
    from bigearthnet_common.example_data import get_s1_example_folder_path, get_s2_example_folder_path

    root = tmp_path_factory.mktemp("ben-examples")
    (root / "BigEarthNet-v1.0").symlink_to(get_s2_example_folder_path(), target_is_directory=True)
    (root / "BigEarthNet-S1-v1.0").symlink_to(get_s1_example_folder_path(), target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    from mmvit.data.demo import write_demo_archive

    return write_demo_archive(tmp_path_factory.mktemp("demo") / "archive", patches=DEMO_PATCHES, seed=3)


@pytest.fixture(scope="session")
def v2_root(tmp_path_factory, demo_root) -> Path:
    from mmvit.data.archive import open_archive
    from tests.v2_fixture import write_v2_fixture

    snowy = {open_archive(demo_root).patches("train")[0].patch}
    return write_v2_fixture(demo_root, tmp_path_factory.mktemp("v2") / "reben", snowy=snowy)


@pytest.fixture(scope="module")
def ray_session():
    """A private local Ray of 2 CPUs for one test module (a study's trials run in it)."""
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=2,
             object_store_memory=100 * 2**20, logging_level="ERROR")
    yield
    ray.shutdown()
