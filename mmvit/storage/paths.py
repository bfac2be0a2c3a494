"""Every default location of a study, in one place.

``studies/<study>/optuna.db`` (the SQLite storage unless ``--storage`` names another),
``<root>/<study>/checkpoints`` and ``<root>/<study>/ray`` (root: ``--storage-path``, a folder
every node mounts or an object-store URI, else the studies folder) and ``reports/<study>/``.
``run``, ``status``, ``report`` and the benchmarks all ask this class, so a study run from one
command is found by the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmvit.errors import StudyError


@dataclass(frozen=True)
class StudyPaths:
    study: str
    studies_dir: Path = Path("studies")
    reports_dir: Path = Path("reports")
    storage_path: str | None = None
    """``--storage-path``: where checkpoints and Ray results go instead of ``studies_dir``."""

    @property
    def folder(self) -> Path:
        return Path(self.studies_dir) / self.study

    @property
    def sqlite_file(self) -> Path:
        return self.folder / "optuna.db"

    def storage_url(self, url: str | None = None) -> str:
        """``url`` if given, else the study's SQLite file (its folder created: ``run`` writes it)."""
        if url:
            return url
        self.folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.sqlite_file.resolve()}"

    def existing_storage_url(self, url: str | None = None) -> str:
        """As :meth:`storage_url` for a reader (``status``, ``report``): a missing SQLite file is an
        error, since opening it would create an empty database."""
        if url:
            return url
        if not self.sqlite_file.is_file():
            raise StudyError(f"No study {self.study!r} in {self.studies_dir}: {self.sqlite_file} does not exist. Run "
                             "the study first (`mmvit-study run <file>`), pass the folder it was run in "
                             "(--studies-dir), or the storage it was run with (--storage URL).")
        return f"sqlite:///{self.sqlite_file.resolve()}"

    def _under_root(self, name: str) -> str:
        from mmvit.storage.shared_path import join, resolve_root

        return join(resolve_root(self.storage_path, self.studies_dir), self.study, name)

    @property
    def checkpoints(self) -> str:
        """Each trial's epoch checkpoints (a folder or a URI: trials may resume on another node)."""
        return self._under_root("checkpoints")

    @property
    def ray_results(self) -> str:
        return self._under_root("ray")

    @property
    def report(self) -> Path:
        return Path(self.reports_dir) / self.study
