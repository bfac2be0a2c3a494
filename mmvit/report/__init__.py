"""HTML reports of a study, with the thesis's tables and paper-ready exports, from Optuna storage only.

``build_report(study_name, storage_url, out_dir)`` writes ``out_dir/index.html``, ``plotly.min.js``
and ``tables/`` (CSV, Markdown, LaTeX). Nothing here imports torch, Ray or the training code.
"""

from mmvit.report.build import build_report

__all__ = ["build_report"]
