"""What a study records in Optuna storage about itself: its identity (the resolved study file,
archive, profile, environment) and the check that a resumed study is the same study.
Opening the storage is :mod:`mmvit.storage.connection`'s job."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna

import mmvit
from mmvit.errors import StudyError
from mmvit.record_schema import StoredStudy, write_study
from mmvit.study.arms import arms_from_ablate
from mmvit.study.spec import StudySpec

PACKAGES = ("mmvit-study", "torch", "timm", "optuna", "ray", "rasterio", "numpy")


def _git_commit(folder: Path, *, toplevel: bool = False) -> str | None:
    """HEAD of the repository holding ``folder``, ``-dirty`` when tracked files differ from it;
    None outside a repository (or, with ``toplevel``, unless ``folder`` is the repository's root)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)

    try:
        root = git("rev-parse", "--show-toplevel")
        if root.returncode or (toplevel and Path(root.stdout.strip()).resolve() != folder.resolve()):
            return None
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return None  # a repository without a commit yet
        dirty = git("diff", "--quiet", "HEAD").returncode == 1
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def environment() -> dict[str, Any]:
    """Package versions, the git commit of the working directory (the researcher's project, which
    holds the study files) and that of mmvit-study's own source when it runs from a checkout (an
    editable install): a report names the code that produced it, and ``-dirty`` says when neither
    commit alone is that code."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    source = Path(mmvit.__file__).resolve().parent.parent  # a checkout's root; site-packages otherwise
    return {"versions": versions, "git_commit": _git_commit(Path.cwd()),
            "mmvit_commit": _git_commit(source, toplevel=True)}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def spec_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(changes, additions) between two resolved specs. New seeds and new arms (a new value of
    an existing axis, a new item of an arm list) are additions — they extend a study; anything
    else is a change. ``description`` and ``reference`` are notes, ``baseline`` a reporting choice
    and ``resources`` a run-time choice: none of them is identity."""
    changes, additions = [], []
    old_seeds, new_seeds = old.get("seeds", []), new.get("seeds", [])
    if set(old_seeds) <= set(new_seeds):
        additions += [f"seed {s}" for s in new_seeds if s not in old_seeds]
    else:
        changes.append(f"seeds {old_seeds} → {new_seeds}")

    def arms(spec: dict) -> dict[str, str]:
        return {arm.name: json.dumps(arm.settings, sort_keys=True) for arm in arms_from_ablate(spec.get("ablate", {}))}

    old_arms, new_arms = arms(old), arms(new)
    removed = [name for name in old_arms if name not in new_arms]
    altered = [name for name in old_arms if name in new_arms and old_arms[name] != new_arms[name]]
    if removed:
        changes.append("arms removed or renamed: " + "; ".join(removed))
    if altered:
        changes.append("arms with changed settings: " + "; ".join(altered))
    if not removed and not altered:
        additions += [f"arm {name}" for name in new_arms if name not in old_arms]
    ignored = ("seeds", "ablate", "description", "reference", "resources", "baseline")
    rest_old = _flatten({k: v for k, v in old.items() if k not in ignored})
    rest_new = _flatten({k: v for k, v in new.items() if k not in ignored})
    for key in sorted(rest_old.keys() | rest_new.keys()):
        if rest_old.get(key) != rest_new.get(key):
            changes.append(f"{key}: {rest_old.get(key)!r} → {rest_new.get(key)!r}")
    return changes, additions


def ensure_study(storage: optuna.storages.BaseStorage, spec: StudySpec, *, source: str,
                 archive: str, profile: str) -> tuple[optuna.Study, list[str]]:
    """Create the study with its identity attributes, or load it and check the spec is the same
    (additions extend it). Returns the study and the additions."""
    resolved = spec.model_dump(mode="json")
    study = optuna.create_study(storage=storage, study_name=spec.study, direction=spec.direction,
                                load_if_exists=True)
    recorded = StoredStudy.from_study(study)
    stored = recorded.spec
    additions: list[str] = []
    if stored is not None:
        changes, additions = spec_changes(stored, resolved)
        if changes:
            raise StudyError(
                f"The study {spec.study!r} in this storage was started from a different {source}: "
                + "; ".join(changes) + ". Restore the file, or give the changed study a new `study:` "
                "name (new seeds and new values of an existing axis are allowed: they extend the study).")
        if (recorded.profile or profile) != profile:
            raise StudyError(f"The study {spec.study!r} was run with the {recorded.profile!r} "
                             f"profile, not {profile!r}; a study keeps one profile. Run it with that "
                             "profile, or give this run a new `study:` name.")
    if stored is None or additions:
        write_study(study, StoredStudy.identity(spec=resolved, spec_hash=spec.digest(), archive=archive,
                                                profile=profile, environment=environment()))
    return study, additions
