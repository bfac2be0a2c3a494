"""Opening Optuna storage — the single source of truth of a study.

SQLite at ``studies/<study>/optuna.db`` by default; any SQLAlchemy URL (PostgreSQL on a
cluster) otherwise. Credentials in a URL are never printed: :func:`redact`. One storage object
per URL and process, opened as a :class:`~mmvit.storage.resilient.ResilientStorage`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mmvit.errors import StudyError
from mmvit.storage.paths import StudyPaths


def heartbeat_s() -> int:
    """Seconds between a running trial's heartbeats: ``$MMVIT_HEARTBEAT_S`` (default 5), read when
    asked, not at import, so a test or a cluster worker (Ray hands it the driver's MMVIT_*
    settings) sees the value of its own environment."""
    value = os.environ.get("MMVIT_HEARTBEAT_S", "5")
    try:
        return max(1, int(value))
    except ValueError:
        raise StudyError(f"$MMVIT_HEARTBEAT_S must be a whole number of seconds, but it is {value!r}. "
                         "Set it to 5 (the default) or unset it.") from None


def grace_s() -> int:
    """No heartbeat for this long: the trial's driver (or worker) is gone."""
    return 4 * heartbeat_s()


def storage_url(study: str, studies_dir: Path, url: str | None = None) -> str:
    """``url`` if given, else SQLite in ``studies_dir/<study>/optuna.db`` (folder created)."""
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
    """A :class:`~mmvit.storage.resilient.ResilientStorage`: once open, its calls wait out a
    database server that goes away for a while (``$MMVIT_STORAGE_RETRY_S``). Opening it does not
    wait: a wrong URL, password or server is reported at once."""
    from mmvit.storage.resilient import ResilientStorage

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
