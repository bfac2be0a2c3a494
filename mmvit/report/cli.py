"""``mmvit-study report STUDY``: the storage and the output folder (:class:`StudyPaths`' defaults).

Kept apart from :mod:`mmvit.cli` so the command's defaults and errors are testable without
typer, and so the report never pulls the training stack in through the CLI module.
"""

from __future__ import annotations

from pathlib import Path

from mmvit.report.build import build_report
from mmvit.storage.paths import StudyPaths


def report_command(study: str, storage: str | None, studies_dir: Path, out: Path | None) -> Path:
    """Build the report of ``study`` into ``out`` (default ``reports/<study>``); returns index.html."""
    paths = StudyPaths(study, Path(studies_dir))
    return build_report(study, paths.existing_storage_url(storage), Path(out) if out is not None else paths.report)
