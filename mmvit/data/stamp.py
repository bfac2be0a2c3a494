"""A *stamp* of what decides an archive split's patch list, taken without listing the archive.

A split's patch list is a function of (a) which patch folders exist — the entries of the S2 and
S1 folders (v1), or of their tile sub-folders (v2) —, (b) the split and exclusion lists — the
archive's ``splits/*.csv`` or the ``bigearthnet-common`` tables (v1), ``metadata.parquet``
(v2) — and (c) the rules of :meth:`~mmvit.data.archive.Archive._scan`. The stamp holds:

* for each folder whose entries count, its ``st_mtime_ns``, ``st_ctime_ns`` and ``st_ino``:
  adding, removing or renaming an entry changes the folder's mtime and ctime; a tool that
  restores the mtime afterwards (``rsync -a``, ``touch -r``) still changes the ctime, which no
  one can set; a folder swapped for another changes the inode;
* for each list file, the same plus its size (an edit in place or a replacement by rename);
* the installed ``bigearthnet-common`` version, which ships the official lists and exclusions;
* :data:`SCAN_RULES`, to be raised whenever the rules of ``_scan`` change.

Why the v1 folder stats are enough: a listing only asks which names the two folders hold
(:func:`~mmvit.data.archive.folder_entries`, itself cached by the folder's mtime), never what is
inside a patch folder, so an unchanged folder entry list means an unchanged listing.

What it does not see: changes *inside* a patch folder (a band file replaced or truncated; the
hash of the patch names that keys the cache never saw those either: ``data check --deep`` does),
a ``bigearthnet-common`` edited in place without a new version, and a change made within one
timestamp granule of the stamp on a filesystem with coarse timestamps. The last is excluded by
:attr:`Stamp.settled`: a stamp whose newest timestamp is less than :data:`SETTLE_NS` older than
the moment it was taken is never recorded (as git treats a "racily clean" index), so the next
open lists the archive again. Copies of one archive at one path on several machines that share a
cache folder have different inodes: each machine's first trial lists it again (as before).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

SCAN_RULES = 1
"""The version of the listing rules (:meth:`Archive._scan`): raise it when they change."""
SETTLE_NS = 2_000_000_000
"""How much older than the stamp its newest timestamp must be (2 s: FAT's granule, and more
than ext4's, XFS's or NFS's)."""


@dataclass
class Stamp:
    """JSON-able ``values`` and the newest timestamp among them, collected in one pass."""

    values: dict[str, object] = field(default_factory=dict)
    newest_ns: int = 0
    taken_ns: int = field(default_factory=time.time_ns)

    @property
    def settled(self) -> bool:
        """True when no change since could share a timestamp with what the stamp holds."""
        return self.taken_ns - self.newest_ns >= SETTLE_NS

    def add_value(self, key: str, value: object) -> None:
        self.values[key] = value

    def add_path(self, key: str, path: Path, *, size: bool = False) -> None:
        """A folder's or file's timestamps and inode (``None`` where it is absent)."""
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self.values[key] = None
            return
        self.values[key] = _fields(info, size)
        self.newest_ns = max(self.newest_ns, info.st_mtime_ns, info.st_ctime_ns)

    def add_subfolders(self, key: str, folder: Path) -> None:
        """One digest of the timestamps and inodes of ``folder``'s sub-folders: v2 keeps its
        patch folders one level down, in tile folders (hundreds of stats, not 590,326)."""
        lines = []
        try:
            with os.scandir(folder) as scan:
                for entry in scan:
                    if entry.is_dir():
                        info = entry.stat()
                        lines.append(f"{entry.name}\t{_fields(info, False)}")
                        self.newest_ns = max(self.newest_ns, info.st_mtime_ns, info.st_ctime_ns)
        except (FileNotFoundError, NotADirectoryError):
            self.values[key] = None
            return
        self.values[key] = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def _fields(info: os.stat_result, size: bool) -> list[int]:
    values = [info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
    return [*values, info.st_size] if size else values


def package_version(name: str) -> str | None:
    """The installed version of a distribution (``None`` if it is not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
