"""``mmvit-study report STUDY``: where the storage and the output folder are by default.

Kept apart from :mod:`mmvit.cli` so the command's defaults and errors are testable without
typer, and so the report never pulls the training stack in through the CLI module.
"""

from __future__ import annotations

from pathlib import Path

from mmvit.errors import StudyError
from mmvit.report.build import build_report


def default_storage(study: str, studies_dir: Path) -> str:
    """``sqlite:///<studies_dir>/<study>/optuna.db``; a StudyError when that file does not exist
    (opening it would create an empty database)."""
    path = Path(studies_dir) / study / "optuna.db"
    if not path.is_file():
        raise StudyError(f"No study {study!r} in {studies_dir}: {path} does not exist. Run the study first "
                         "(`mmvit-study run <file>`), pass the folder it was run in (--studies-dir), or the "
                         "storage it was run with (--storage URL).")
    return f"sqlite:///{path.resolve()}"


def report_command(study: str, storage: str | None, studies_dir: Path, out: Path | None) -> Path:
    """Build the report of ``study`` into ``out`` (default ``reports/<study>``); returns index.html."""
    url = storage or default_storage(study, studies_dir)
    return build_report(study, url, Path(out) if out is not None else Path("reports") / study)
