"""Study storage: location, redaction, identity attributes, changed-spec refusal, additions."""

from __future__ import annotations

import optuna
import pytest

from mmvit.storage import optuna_adapter
from mmvit.errors import StudyError
from mmvit.study.spec import parse_spec
from mmvit.storage.connection import open_storage, redact, storage_url
from mmvit.study.storage import ensure_study, spec_changes

SPEC = """\
study: depth
ablate:
  model.fusion: [early, sct]
  model.depth: [2, 4]
seeds: [0, 1]
base:
  train: {epochs: 3}
"""


def _open(tmp_path, text=SPEC, profile="quick"):
    storage = open_storage(storage_url("depth", tmp_path / "studies"))
    return ensure_study(storage, parse_spec(text, "depth.yaml"), source="depth.yaml",
                        archive="demo", profile=profile)


def test_default_storage_is_sqlite_under_studies(tmp_path):
    url = storage_url("depth", tmp_path / "studies")
    assert url == f"sqlite:///{(tmp_path / 'studies' / 'depth' / 'optuna.db').resolve()}"
    assert storage_url("depth", tmp_path, "postgresql://u:p@h/db") == "postgresql://u:p@h/db"


def test_redact_hides_the_password():
    assert redact("postgresql://alice:s3cret@db.lab:5432/studies") == "postgresql://alice:***@db.lab:5432/studies"
    assert "s3cret" not in redact("postgresql+psycopg://alice:s3cret@db/studies")


def test_new_study_records_its_identity(tmp_path):
    study, additions = _open(tmp_path)
    attrs = study.user_attrs
    assert additions == [] and attrs["profile"] == "quick" and attrs["archive"] == "demo"
    assert attrs["spec"]["ablate"]["model.depth"] == [2, 4] and len(attrs["spec_hash"]) == 16
    assert attrs["environment"]["versions"]["optuna"] == optuna.__version__
    again, additions = _open(tmp_path)
    assert additions == [] and optuna_adapter.study_id(again) == optuna_adapter.study_id(study)


@pytest.mark.parametrize("edit, named", [
    (("train: {epochs: 3}", "train: {epochs: 5}"), "base.train.epochs: 3 → 5"),
    (("model.depth: [2, 4]", "model.depth: [2, 8]"), "arms removed or renamed: model.fusion=early, model.depth=4"),
    (("seeds: [0, 1]", "seeds: [1]"), "seeds [0, 1] → [1]"),
    (("  model.depth: [2, 4]\n", ""), "arms removed or renamed: model.fusion=early, model.depth=2"),
])
def test_changed_spec_is_refused_naming_the_change(tmp_path, edit, named):
    _open(tmp_path)
    with pytest.raises(StudyError) as error:
        _open(tmp_path, SPEC.replace(*edit))
    assert named in str(error.value) and "new `study:` name" in str(error.value)


def test_additions_extend_the_study(tmp_path):
    _open(tmp_path)
    study, additions = _open(tmp_path, SPEC.replace("seeds: [0, 1]", "seeds: [0, 1, 2]")
                             .replace("model.depth: [2, 4]", "model.depth: [2, 4, 8]"))
    assert additions == ["seed 2", "arm model.fusion=early, model.depth=8", "arm model.fusion=sct, model.depth=8"]
    assert study.user_attrs["spec"]["seeds"] == [0, 1, 2]


def test_profile_is_part_of_the_study(tmp_path):
    _open(tmp_path)
    with pytest.raises(StudyError, match="'quick' profile, not 'full'"):
        _open(tmp_path, profile="full")


def test_spec_changes_ignores_description():
    assert spec_changes({"description": "a", "seeds": [0]}, {"description": "b", "seeds": [0]}) == ([], [])


def test_a_new_baseline_is_no_change_of_the_study(tmp_path):
    assert spec_changes({"seeds": [0]}, {"seeds": [0], "baseline": {"model.depth": 4}}) == ([], [])
    _open(tmp_path)
    _, additions = _open(tmp_path, SPEC + "baseline: {model.depth: 4, model.fusion: sct}\n")
    assert additions == []


def test_resources_are_not_identity_a_resumed_study_may_use_others(tmp_path):
    _open(tmp_path, SPEC + "resources: {cpu: 1, gpu: 0}\n")
    study, additions = _open(tmp_path, SPEC + "resources: {cpu: 4, gpu: 0.5}\n")  # not refused
    assert additions == []
    _open(tmp_path)  # nor is leaving them out (chosen at run time)
    assert parse_spec(SPEC + "resources: {gpu: 1}\n").digest() == parse_spec(SPEC).digest()


def test_unreachable_storage_is_a_clear_error():
    with pytest.raises(StudyError, match="Cannot open the study storage postgresql://u:\\*\\*\\*@127.0.0.1:1/x"):
        open_storage("postgresql://u:pw@127.0.0.1:1/x")


def _git(folder, *args):
    import subprocess
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(folder), "PATH": "/usr/bin:/bin"})


def test_the_commits_recorded_name_the_code_and_say_when_it_was_changed(tmp_path):
    from mmvit.study.storage import _git_commit

    assert _git_commit(tmp_path) is None, "not a repository"
    repo = tmp_path / "project"
    (repo / "sub").mkdir(parents=True)
    _git(repo, "init", "-q")
    assert _git_commit(repo) is None, "a repository without a commit"
    (repo / "depth.yaml").write_text("study: depth\n")
    _git(repo, "add", "depth.yaml")
    _git(repo, "commit", "-qm", "first")
    head = _git_commit(repo)
    assert head is not None and len(head) == 40
    (repo / "notes.txt").write_text("untracked")
    assert _git_commit(repo / "sub") == head, "any folder of the repository; untracked files change no code"
    (repo / "depth.yaml").write_text("study: depth2\n")
    assert _git_commit(repo) == head + "-dirty"
    # an installed package inside some other repository (a venv in a project) is not its checkout
    assert _git_commit(repo / "sub", toplevel=True) is None
    assert _git_commit(repo, toplevel=True) == head + "-dirty"


def test_the_report_names_both_commits_once_each(tmp_path):
    from mmvit.report.page import _commits_text

    assert _commits_text({"git_commit": "a1", "mmvit_commit": "b2-dirty"}) == "working directory a1; mmvit-study b2-dirty"
    assert _commits_text({"git_commit": "a1", "mmvit_commit": "a1"}) == "a1 (working directory and mmvit-study)"
    assert _commits_text({"git_commit": None, "mmvit_commit": "b2"}) == "mmvit-study b2"
    assert _commits_text({"git_commit": "a1"}) == "working directory a1", "a study recorded before mmvit_commit"
    assert _commits_text({}) == "not recorded"
