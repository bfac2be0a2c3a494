"""The scalar metrics' names, directions and display names: one home, standard library only.

Training computes the metrics (:mod:`mmvit.train.metrics`, numpy), the configuration and study
files name them (``train.metric``, ``metric:``), the report and the CLI show them. All of them
read this table, so a name or a direction cannot drift between writer and reader, and the
configuration does not import the training code to check a name.
"""

from __future__ import annotations

import difflib

HIGHER_IS_BETTER: dict[str, bool] = {
    "ap_micro": True,
    "ap_macro": True,
    "f2": True,
    "f2_macro": True,
    "hamming_loss": False,
    "precision_micro": True,
    "recall_micro": True,
    "precision_macro": True,
    "recall_macro": True,
}
"""Scalar metrics and their direction (for selection on the validation split)."""

LOWER_IS_BETTER: frozenset[str] = frozenset(name for name, higher in HIGHER_IS_BETTER.items() if not higher)

AGGREGATE: tuple[str, ...] = ("ap_micro", "ap_macro", "f2", "hamming_loss")
"""The aggregate metrics of the thesis tables, in column order."""

DISPLAY_NAMES: dict[str, str] = {"ap_micro": "AP micro", "ap_macro": "AP macro", "f2": "F2",
                                 "hamming_loss": "HL", "f2_macro": "F2 macro",
                                 "precision_micro": "precision micro", "recall_micro": "recall micro",
                                 "precision_macro": "precision macro", "recall_macro": "recall macro"}


def check_metric(name: str) -> str:
    """``name`` if it is a scalar metric; otherwise a ValueError with the valid names."""
    if name not in HIGHER_IS_BETTER:
        close = difflib.get_close_matches(name, HIGHER_IS_BETTER, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"metric must be one of {', '.join(HIGHER_IS_BETTER)}, but got {name!r}{hint}")
    return name
