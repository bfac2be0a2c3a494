"""Optuna storage — the single source of truth of a study — and what a study records in it.

SQLite at ``studies/<study>/optuna.db`` by default; any SQLAlchemy URL (PostgreSQL on a
cluster) otherwise. Credentials in a URL are never printed: :func:`redact`.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mmvit.errors import StudyError
from mmvit.record_schema import StoredStudy, write_study
from mmvit.study.arms import arms_from_ablate
from mmvit.study.spec import StudySpec

PACKAGES = ("mmvit-study", "torch", "timm", "optuna", "ray", "rasterio", "numpy")


def storage_url(study: str, studies_dir: Path, url: str | None = None) -> str:
    """``url`` if given, else SQLite in ``studies_dir/<study>/optuna.db`` (folder created)."""
    from mmvit.study.paths import StudyPaths

    return StudyPaths(study, Path(studies_dir)).storage_url(url)


def redact(url: str) -> str:
    """``postgresql://user:***@host/db`` — the form logs, the progress view and reports show."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable storage URL>"


_OPEN: dict[tuple[int, str], optuna.storages.RDBStorage] = {}


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDBStorage instance, one per URL and process: the progress view, the live report and
    every trial of a reused worker share one connection pool instead of opening a pool each
    (PostgreSQL's connection limit)."""
    key = (os.getpid(), url)  # a forked child opens its own pool: connections do not survive fork
    if key not in _OPEN:
        _quiet_heartbeat_warnings()
        _OPEN[key] = _connect(url)
    return _OPEN[key]


def _quiet_heartbeat_warnings() -> None:
    """Our trials are asked outside ``Study.optimize``, with heartbeats recorded by
    :mod:`mmvit.study.claims`: Optuna's warnings about that are noise on every ask. Set when a
    storage is first opened (not at import: importing this module changes nothing)."""
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    warnings.filterwarnings("ignore", message="Argument ``(heartbeat_interval|grace_period)`` is an experimental")


def _connect(url: str) -> optuna.storages.RDBStorage:
    """A :class:`~mmvit.study.resilient_storage.ResilientStorage`: once open, its calls wait out a
    database server that goes away for a while (``$MMVIT_STORAGE_RETRY_S``). Opening it does not
    wait: a wrong URL, password or server is reported at once."""
    from mmvit.study.claims import grace_s, heartbeat_s
    from mmvit.study.resilient_storage import ResilientStorage

    if url.startswith("sqlite"):
        engine: dict[str, Any] = {"connect_args": {"timeout": 60}}
    else:
        engine = {"pool_pre_ping": True}  # a connection the server dropped is replaced, not used
        if url.startswith("postgresql") and "connect_timeout" not in url:
            engine["connect_args"] = {"connect_timeout": 10}  # an unanswered connect must not outlast the retry budget
    try:
        return ResilientStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_s(), grace_period=grace_s())
    except Exception as error:  # SQLAlchemy and drivers raise many unrelated types
        raise StudyError(f"Cannot open the study storage {redact(url)} ({type(error).__name__}: "
                         f"{str(error).splitlines()[0]}). Check the URL, the server and the driver "
                         "(PostgreSQL needs `pip install -e '.[postgres]'`).") from None


def environment() -> dict[str, Any]:
    """Package versions and the git commit of the working directory (None outside a repo)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"versions": versions, "git_commit": commit}


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
