"""``--storage-path``: folders and object-store URIs for checkpoints, and the warning a multi-node
cluster without one gets."""

from __future__ import annotations

import logging

import pytest

from mmvit.errors import StudyError
from mmvit.storage.shared_path import join, resolve_root, trial_checkpoints


def test_a_folder_is_made_absolute_and_a_uri_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_root("shared", tmp_path / "studies") == str(tmp_path / "shared")
    assert resolve_root(None, tmp_path / "studies") == str(tmp_path / "studies")
    assert resolve_root(f"file://{tmp_path}/bucket/", tmp_path) == f"file://{tmp_path}/bucket"
    assert join(f"file://{tmp_path}/bucket", "s", "checkpoints") == f"file://{tmp_path}/bucket/s/checkpoints"


def test_an_unknown_scheme_is_one_clear_error(tmp_path):
    with pytest.raises(StudyError, match=r"--storage-path nosuch://bucket/x is not a storage pyarrow can open .* "
                                         r"Use a folder every node mounts, or an s3://"):
        resolve_root("nosuch://bucket/x", tmp_path)


def test_uri_checkpoints_are_published_and_fetched_back(tmp_path):
    uri = f"file://{tmp_path}/bucket/study/checkpoints/abc"
    with trial_checkpoints(uri) as (folder, publish):
        (folder / "last.pt").write_bytes(b"epoch 1")
        assert not (tmp_path / "bucket").exists(), "nothing leaves the node before publish"
        publish()
        (folder / "last.pt").write_bytes(b"epoch 2")
        publish()
    assert (tmp_path / "bucket/study/checkpoints/abc/last.pt").read_bytes() == b"epoch 2"
    with trial_checkpoints(uri) as (folder, _):  # a resumed trial, maybe on another node
        assert (folder / "last.pt").read_bytes() == b"epoch 2"
    with trial_checkpoints(f"file://{tmp_path}/bucket/study/checkpoints/new") as (folder, _):
        assert list(folder.iterdir()) == [], "a new configuration starts empty"


def test_a_file_uri_is_published_through_a_temporary_name(tmp_path, monkeypatch):
    """A kill in the middle of publishing must not leave last.pt cut short: each file is copied to
    a .partial name and renamed over the old one."""
    import pyarrow.fs

    written = []
    real_copy = pyarrow.fs.copy_files
    monkeypatch.setattr(pyarrow.fs, "copy_files",
                        lambda source, destination, **kw: written.append(destination) or real_copy(source, destination, **kw))
    uri = f"file://{tmp_path}/bucket/abc"
    with trial_checkpoints(uri) as (folder, publish):
        (folder / "last.pt").write_bytes(b"epoch 1")
        (folder / "best.pt").write_bytes(b"epoch 1")
        publish()
    assert written and all(path.endswith(".partial") for path in written), written
    assert sorted(p.name for p in (tmp_path / "bucket/abc").iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.parametrize("nodes, storage_path, warned", [(2, None, True), (2, "/shared", False), (1, None, False)])
def test_a_multi_node_cluster_without_a_shared_path_is_warned(monkeypatch, caplog, nodes, storage_path, warned):
    import ray

    from mmvit.study.runner import warn_unshared

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}] * nodes + [{"Alive": False}])
    with caplog.at_level(logging.WARNING, logger="mmvit.study.runner"):
        warn_unshared(storage_path)
    assert ("--storage-path with a folder every node mounts" in caplog.text) == warned, caplog.text
