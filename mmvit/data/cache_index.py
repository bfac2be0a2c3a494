"""A split cache's patch list without listing the archive: the record that lets a trial start fast.

Listing a full v1 archive for one split (two directory listings of 590,326 entries, the official
tables of ``bigearthnet-common``, a :class:`~mmvit.data.archive.PatchRef` with two paths per
patch) takes 12 s and 0.5 GB in every trial process, only to find the cache folder
``<split>-<hash of the patch names>`` that already holds the list in its ``index.json``. So when a
split's cache is opened or built by listing, a small *pointer* is written beside the folders:

    <cache_dir>/<archive identity>/<split>.json            (<split>.noexclude.json: exclude=False)
        {"version": 1, "split": "train", "exclude": true, "folder": "train-<hash>",
         "stamp": {...}, "presence": {"listed": 269695, "present": 269695, "missing": []}}

``stamp`` (:mod:`mmvit.data.stamp`) is what decides the patch list — the patch folders' and the
split lists' timestamps and inodes, the ``bigearthnet-common`` version — taken just before the
listing. A later open takes a new stamp (a few ``stat`` calls) and, if it is equal, reads the
names from the folder's ``index.json`` (checked against the folder's hash) and the presence from
the pointer: no listing. Anything else — no pointer, another stamp, a pointer or index that does
not parse or does not match — lists the archive as before, and the pointer is written again.

Names are held as two numpy byte-string arrays (about 80 bytes a pair: 21 MB for the training
split, against some 300 MB of ``PatchRef`` objects), and :class:`PatchList` builds a ``PatchRef``
only when one is asked for (a direct read, or a conversion).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import numpy as np

from mmvit.data.archive import MISSING_EXAMPLES, Archive, PatchRef, Presence
from mmvit.data.splits import normalise_split
from mmvit.data.stamp import Stamp

POINTER_VERSION = 1
log = logging.getLogger(__name__)


def _name_array(names: list[str]) -> np.ndarray:
    """One byte per character for ASCII names (all of BigEarthNet's); unicode otherwise."""
    try:
        return np.array(names, dtype=np.bytes_) if names else np.array([], dtype="S1")
    except UnicodeEncodeError:
        return np.array(names, dtype=np.str_)


def _as_str(values: np.ndarray) -> list[str]:
    return values.astype(np.str_).tolist() if values.dtype.kind == "S" else values.tolist()


def _str(value: np.bytes_ | np.str_) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _digest(lines: bytes) -> str:
    return hashlib.sha256(lines).hexdigest()[:12]


@dataclass(frozen=True, eq=False)
class PatchNames:
    """The S2 and S1 names of a split's pairs, row by row (the cache's row order), and the hash
    of the S2 names that names the cache folder (computed while the names are still a list)."""

    s2: np.ndarray
    s1: np.ndarray
    folder_hash: str = field(default="")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PatchNames) and np.array_equal(self.s2, other.s2)
                and np.array_equal(self.s1, other.s1))

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> PatchNames:
        s2, s1 = [], []
        for a, b in pairs:
            s2.append(a)
            s1.append(b)
        if not all(isinstance(n, str) for n in s2) or not all(isinstance(n, str) for n in s1):
            raise ValueError("patch names must be strings")
        return cls(_name_array(s2), _name_array(s1), _digest("\n".join(s2).encode()))

    @classmethod
    def from_refs(cls, refs: Sequence[PatchRef]) -> PatchNames:
        return cls.from_pairs((r.patch, r.s1_patch) for r in refs)

    def __len__(self) -> int:
        return len(self.s2)

    def name(self, row: int) -> str:
        """The S2 name of one row."""
        return _str(self.s2[row])

    def names(self, rows: np.ndarray | None = None) -> list[str]:
        """The S2 names of ``rows`` (all rows when None), as str."""
        return _as_str(self.s2 if rows is None else self.s2[rows])

    def digest(self) -> str:
        """The hash that names the cache folder (of the S2 names, one a line)."""
        return self.folder_hash or _digest("\n".join(self.names()).encode())


class PatchList(Sequence[PatchRef]):
    """A split's :class:`PatchRef` s, each built when it is asked for (a slice: a list)."""

    def __init__(self, archive: Archive, names: PatchNames) -> None:
        self.archive, self.patch_names = archive, names

    def __len__(self) -> int:
        return len(self.patch_names)

    @overload
    def __getitem__(self, index: int) -> PatchRef: ...

    @overload
    def __getitem__(self, index: slice) -> list[PatchRef]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.archive.ref(_str(self.patch_names.s2[index]), _str(self.patch_names.s1[index]))


def write_index(path: Path, names: PatchNames) -> None:
    """``index.json``: ``[[S2 name, S1 name], ...]`` row by row (atomic; one temporary file per
    process, as several trials may write the same index at once)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps([list(pair) for pair in zip(_as_str(names.s2), _as_str(names.s1))]))
    os.replace(tmp, path)


def read_index(path: Path) -> PatchNames:
    """The names of ``index.json``; ValueError or OSError if it is not a list of name pairs."""
    raw = path.read_bytes()
    plain = _plain_pairs(raw)
    if plain is not None:
        s2, s1 = plain
        return PatchNames(np.array(s2, dtype=np.bytes_), np.array(s1, dtype=np.bytes_), _digest(b"\n".join(s2)))
    pairs = json.loads(raw)
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise ValueError(f"{path} is not a list of [S2 name, S1 name] pairs")
    return PatchNames.from_pairs(pairs)


def _plain_pairs(raw: bytes) -> tuple[list[bytes], list[bytes]] | None:
    """The S2 and S1 names of an index exactly as :func:`write_index` writes ASCII names without
    escapes (``[["a", "b"], ["c", "d"]]``): split at the quotes, 4x faster than ``json.loads``.
    None for anything else (then JSON decides)."""
    if not raw.isascii() or b"\\" in raw:
        return None
    parts = raw.split(b'"')
    if len(parts) < 5 or len(parts) % 4 != 1 or parts[0] != b"[[" or parts[-1] != b"]]":
        return None
    if set(parts[2::4]) != {b", "} or set(parts[4:-1:4]) - {b"], ["}:
        return None
    return parts[1::4], parts[3::4]


def pointer_path(base: Path, split: str, exclude: bool) -> Path:
    """``<cache_dir>/<archive identity>/<split>.json`` (``.noexclude.json`` without exclusions)."""
    return base / (f"{split}.json" if exclude else f"{split}.noexclude.json")


def write_pointer(path: Path, *, split: str, exclude: bool, folder: str, stamp: Stamp,
                  presence: Presence) -> bool:
    """Record which folder holds the split while ``stamp`` holds; False (nothing written) when the
    stamp is too recent to be trusted (:attr:`Stamp.settled`)."""
    if not stamp.settled:
        log.debug("Not recording %s: the archive changed less than 2 s before it was listed.", path)
        return False
    record = {"version": POINTER_VERSION, "split": split, "exclude": exclude, "folder": folder,
              "stamp": stamp.values,
              "presence": {"listed": presence.listed, "present": presence.present,
                           "missing": list(presence.missing)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return True


@dataclass(frozen=True)
class Recorded:
    """What the fast path found: the cache folder, its names and the split's presence."""

    dir: Path
    names: PatchNames
    presence: Presence


def open_recorded(archive: Archive, split: str, exclude: bool, base: Path) -> Recorded | None:
    """The split's cache as its pointer records it, if the archive's stamp is unchanged and the
    folder's index matches; None (list the archive) in every other case, a broken file included."""
    path = pointer_path(base, split, exclude)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.debug("Ignoring the unreadable cache pointer %s (%s).", path, error)
        return None
    try:
        return _check(record, archive, split, exclude, base)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.debug("Ignoring the cache pointer %s (%s: %s).", path, type(error).__name__, error)
        return None


def _check(record: dict, archive: Archive, split: str, exclude: bool, base: Path) -> Recorded | None:
    if (record["version"], record["split"], record["exclude"]) != (POINTER_VERSION, split, exclude):
        return None
    if record["stamp"] != archive.stamp().values:
        return None  # the archive (or what lists it) changed since: list it again
    folder = record["folder"]
    if not isinstance(folder, str) or "/" in folder or not folder.startswith(f"{split}-"):
        raise ValueError(f"folder must be '{split}-<hash>', but got {folder!r}")
    raw = record["presence"]
    missing = tuple(str(name) for name in raw["missing"])[:MISSING_EXAMPLES]
    presence = Presence(normalise_split(split), int(raw["listed"]), int(raw["present"]), missing)
    names = read_index(base / folder / "index.json")
    if len(names) != presence.present or folder != f"{split}-{names.digest()}":
        raise ValueError(f"{base / folder / 'index.json'} holds {len(names)} names that do not hash to "
                         f"the folder name (the pointer records {presence.present})")
    return Recorded(base / folder, names, presence)
