"""The grammar of speckle-filter names (``none``, ``median<k>``, ``lee<k>``, odd k in 3..15),
stdlib only: the configuration checks a name without importing the filters (numpy, scipy) of
:mod:`mmvit.data.speckle`, which parses the same names with these functions."""

from __future__ import annotations

import re

from mmvit.errors import DataError

SIZES = range(3, 16, 2)
_PATTERN = re.compile(r"(none|median|lee)(\d*)")


def speckle_rule(value: str) -> str:
    """The message for a name outside the grammar."""
    return ("speckle filter must be 'none', 'median<k>' or 'lee<k>' with odd k in 3..15 "
            f"(e.g. none, median3, median5, lee5), but got {value!r}.")


def parse_speckle_name(text: str) -> tuple[str, int]:
    """``"Median5"`` → ("median", 5), ``"none"`` → ("none", 0); DataError for anything else."""
    match = _PATTERN.fullmatch(str(text).strip().lower())
    kind, digits = match.groups() if match else ("", "")
    if not match or (kind == "none") != (digits == "") or (kind != "none" and int(digits) not in SIZES):
        raise DataError(speckle_rule(str(text)))
    return kind, int(digits or 0)


def speckle_name(kind: str, size: int) -> str:
    """The name as cache keys and stored configurations spell it: ``none``, ``median5``, …"""
    return "none" if kind == "none" else f"{kind}{size}"


def canonical_speckle_name(text: str) -> str:
    """``"Median5 "`` → ``"median5"``; DataError for a name outside the grammar."""
    return speckle_name(*parse_speckle_name(text))
