"""``build_report``: one study in Optuna storage → ``reports/<study>/`` (page, tables, exports).

Why it is built this way:

- **Storage is the only input.** A study may have run on a cluster whose Ray result folders
  are gone; its Optuna database (SQLite file or URL) holds every trial's configuration,
  history and results. Reading only that makes a report reproducible anywhere, and keeps
  torch, Ray and the training code out of the process (a report builds in seconds on a
  laptop, and ``mmvit-study run`` can refresh it after every trial without slowing the study).
- **One computation, many renderings.** Per-arm results and paired tests are computed once
  (:mod:`mmvit.report.analysis`); the page, CSV, Markdown and LaTeX are renderings of the same
  :class:`~mmvit.report.tables.Table` objects, so a number in a paper matches the page.
- **Partial studies are normal.** A live report is read while trials run or after some failed;
  missing seeds are named, never silently averaged away.
- **Offline and safe.** plotly.js sits next to the page; all study text is escaped.
- **Atomic writes.** The page is written to a temporary file and renamed, so a browser
  refreshing a live report never sees half a page.
"""

from __future__ import annotations

from pathlib import Path

from mmvit.report.analysis import arm_results, comparison_pairs, comparison_tests
from mmvit.report.figures import all_figures
from mmvit.report.formats import atomic_write, write_exports
from mmvit.report.overview import overview
from mmvit.report.page import render_page, write_plotly_js
from mmvit.report.records import load_study_record
from mmvit.report.tables import all_tables


def build_report(study_name: str, storage_url: str, out_dir: Path) -> Path:
    """Write the report of ``study_name`` into ``out_dir``; returns the path of ``index.html``.

    Raises :class:`mmvit.errors.StudyError` when the storage or the study does not exist."""
    record = load_study_record(study_name, storage_url)
    out_dir = Path(out_dir)
    tables_dir = out_dir / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    results = arm_results(record)
    tests = comparison_tests(results, comparison_pairs(record))  # the aggregate table's family
    tables = all_tables(record, results, tests)
    exported = []
    for table in tables:
        paths = write_exports(table, tables_dir, study_name)
        exported.append((table, {fmt: path.relative_to(out_dir).as_posix() for fmt, path in paths.items()}))
    atomic_write(tables_dir / "trials.csv", record.frame().to_csv(index=False))
    figures = all_figures(record, results)
    write_plotly_js(out_dir)
    index = out_dir / "index.html"
    atomic_write(index, render_page(record, overview(record, results), exported, figures, "tables/trials.csv"))
    return index
