"""User-facing errors.

Every error a researcher can fix by changing input derives from :class:`MMViTError`; the CLI
catches it once and prints the message (exit code 1) instead of a traceback. Messages state
the rule, then the value, then the fix — in one paragraph.
"""

from __future__ import annotations


class MMViTError(Exception):
    """Base class of errors whose message is meant for the user, not a developer."""


class DataError(MMViTError):
    """An archive, a patch file or a cache is missing, unreadable or malformed."""


class SpecError(MMViTError):
    """A study file (YAML) or a configuration value breaks a rule."""


class StudyError(MMViTError):
    """A study cannot be run, resumed or reported in its current state."""
