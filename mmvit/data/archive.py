"""Find what a BigEarthNet-MM archive holds: its layout, its patches per split, S1↔S2 pairs.

Two layouts are recognised under ``root``:

* **v1** — ``BigEarthNet-v1.0/<S2 patch>/`` and ``BigEarthNet-S1-v1.0/<S1 patch>/``, one GeoTIFF
  per band and a ``<patch>_labels_metadata.json`` with 43-class names. Splits and S2↔S1 pairs
  come from ``root/splits/{train,val,test}.csv`` when present (``S2name,S1name`` per line),
  otherwise from the official lists shipped by ``bigearthnet-common``.
* **v2 (reBEN)** — ``BigEarthNet-S2/<tile>/<patch_id>/``, ``BigEarthNet-S1/<tile>/<s1_name>/``
  and ``metadata.parquet`` (``patch_id``, ``labels`` as 19-class names, ``split`` as
  train/validation/test, ``s1_name``, snow and cloud flags).

An archive may hold only part of BigEarthNet (a country, a season, a download in progress): a
split then holds the patch pairs whose S2 and S1 folders are both on disk, found from directory
listings (never one stat per official patch), and :meth:`Archive.presence` says how many of the
official ones that is. ``require_complete=True`` turns a partial split into an error.

An archive never opens band files; :mod:`mmvit.data.reader` does.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmvit.data import labels as label_codec
from mmvit.data import splits as official
from mmvit.data.reader import read_label_json
from mmvit.data.stamp import SCAN_RULES, Stamp, package_version
from mmvit.errors import DataError

V1_S2_DIR = "BigEarthNet-v1.0"
V1_S1_DIR = "BigEarthNet-S1-v1.0"
V2_S2_DIR = "BigEarthNet-S2"
V2_S1_DIR = "BigEarthNet-S1"
V2_METADATA = "metadata.parquet"
MISSING_EXAMPLES = 10
"""How many missing patch names a :class:`Presence` keeps (``data check`` lists them)."""

log = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()  # (root, split): one partial-archive warning per process


@dataclass(frozen=True)
class PatchRef:
    """Where one S2/S1 patch pair lives; ``labels`` is None where they sit in a v1 JSON."""

    patch: str
    s1_patch: str
    s2_dir: Path
    s1_dir: Path
    labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Presence:
    """How much of one split is on disk: ``present`` of the ``listed`` patch pairs (after the
    exclusions) have both their S2 and their S1 folder; ``missing`` holds the first names that
    do not, sorted."""

    split: str
    listed: int
    present: int
    missing: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.present == self.listed

    def describe(self) -> str:
        return f"{self.split}: {self.present:,} of {self.listed:,} official patches present"


@functools.lru_cache(maxsize=64)
def _entries(folder: str, mtime_ns: int) -> frozenset[str]:
    """Names of the sub-folders of ``folder``; keyed by its mtime, so a folder that gains or
    loses entries is listed again, and the 590,326 entries of a full archive are listed once
    per process rather than once per split and dataset."""
    with os.scandir(folder) as scan:
        return frozenset(entry.name for entry in scan if entry.is_dir())


def folder_entries(folder: Path) -> frozenset[str]:
    """The sub-folder names of ``folder`` (empty if it does not exist)."""
    try:
        return _entries(str(folder), folder.stat().st_mtime_ns)
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()


class Archive(ABC):
    """A BigEarthNet-MM archive on disk (use :func:`open_archive`)."""

    layout: str = ""

    def __init__(self, root: Path, *, require_complete: bool = False) -> None:
        self.root = root
        self.require_complete = require_complete
        self._listings: dict[tuple[str, bool], tuple[list[PatchRef], Presence]] = {}
        self._stamps: dict[tuple[str, bool], Stamp] = {}
        self._adopted: dict[tuple[str, bool], Presence] = {}

    @abstractmethod
    def _scan(self, split: str, exclude: bool) -> tuple[list[PatchRef], int, list[str]]:
        """(pairs of the split on disk, pairs the split lists, names of the listed pairs that are
        not on disk), in S2-name order, from directory listings."""

    def _listing(self, split: str, exclude: bool) -> tuple[list[PatchRef], Presence]:
        split = official.normalise_split(split)
        key = (split, exclude)
        if key not in self._listings:
            # Stamped before listing: a change during the listing shows as a newer stamp later.
            self._stamps[key] = self.stamp()
            present, listed, missing = self._scan(split, exclude)
            presence = Presence(split, listed, len(present), tuple(missing[:MISSING_EXAMPLES]))
            self._listings[key] = present, presence
            self._announce(presence)
        return self._listings[key]

    def _announce(self, presence: Presence) -> None:
        if presence.complete:
            return
        if self.require_complete:
            raise DataError(
                f"The {self.describe()} is incomplete: {presence.describe()} (first missing: "
                f"{', '.join(presence.missing[:3])}). Download or extract the missing patches, or "
                "leave out require_complete (--require-complete) to use the patches present."
            )
        if (str(self.root), presence.split) not in _warned:
            _warned.add((str(self.root), presence.split))
            log.warning("%s in the %s; the others are not on disk and are left out "
                        "(`mmvit-study data check` lists them).", presence.describe(), self.describe())

    def patches(self, split: str, *, exclude: bool = True) -> list[PatchRef]:
        """Patch pairs of a split that are on disk, sorted by S2 name; ``exclude`` drops
        snow/cloud/unlabelled patches."""
        return list(self._listing(split, exclude)[0])

    def presence(self, split: str, *, exclude: bool = True) -> Presence:
        """How many of the split's listed patch pairs are on disk."""
        adopted = self._adopted.get((official.normalise_split(split), exclude))
        return adopted if adopted is not None else self._listing(split, exclude)[1]

    def adopt_presence(self, presence: Presence, *, exclude: bool = True) -> None:
        """Take a split's presence from a record (the cache index) instead of a listing: it is
        announced as a listing's would be (the once-per-split warning, ``require_complete``)."""
        self._announce(presence)
        self._adopted[(presence.split, exclude)] = presence

    def listing_stamp(self, split: str, *, exclude: bool = True) -> Stamp:
        """The stamp taken just before this archive listed the split (listing it if needed)."""
        self._listing(split, exclude)
        return self._stamps[(official.normalise_split(split), exclude)]

    @abstractmethod
    def stamp(self) -> Stamp:
        """What decides every split's patch list, now, without listing it
        (:mod:`mmvit.data.stamp` says why that is enough)."""

    @abstractmethod
    def ref(self, patch: str, s1_patch: str) -> PatchRef:
        """The :class:`PatchRef` of one pair by its names (as a listing builds it)."""

    @property
    @abstractmethod
    def split_source(self) -> str:
        """Where the split lists come from (shown by ``data check``)."""

    def identity(self) -> str:
        """A short key for caches: layout, location and split source of this archive."""
        text = f"{self.layout}|{self.root.resolve()}|{self.split_source}"
        return f"{self.layout}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    def describe(self) -> str:
        return f"BigEarthNet {self.layout} archive at {self.root}"


class V1Archive(Archive):
    layout = "v1"

    def __init__(self, root: Path, *, require_complete: bool = False) -> None:
        super().__init__(root, require_complete=require_complete)
        self.s2_base = root / V1_S2_DIR
        self.s1_base = root / V1_S1_DIR
        self._split_dir = root / "splits"
        self._custom = (self._split_dir / official.SPLIT_FILES["train"]).is_file()
        self._pairs: dict[str, str] | None = None
        self._split_lists: dict[str, list[str]] | None = None

    @property
    def split_source(self) -> str:
        return str(self._split_dir) if self._custom else "bigearthnet-common official v1 split"

    def stamp(self) -> Stamp:
        """The two patch folders (v1 keeps every patch folder directly in them), the custom
        split lists, and the bigearthnet-common version (official lists, exclusions, S1 pairs)."""
        stamp = Stamp()
        stamp.add_value("rules", [self.layout, SCAN_RULES])
        stamp.add_value("bigearthnet-common", package_version("bigearthnet-common"))
        stamp.add_path("s2", self.s2_base)
        stamp.add_path("s1", self.s1_base)
        for file_name in official.SPLIT_FILES.values():
            stamp.add_path(f"splits/{file_name}", self._split_dir / file_name, size=True)
        return stamp

    def ref(self, patch: str, s1_patch: str) -> PatchRef:
        return PatchRef(patch, s1_patch, self.s2_base / patch, self.s1_base / s1_patch)

    def _read_custom_splits(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        lists: dict[str, list[str]] = {}
        pairs: dict[str, str] = {}
        for split, file_name in official.SPLIT_FILES.items():
            path = self._split_dir / file_name
            if not path.is_file():
                raise DataError(
                    f"The archive at {self.root} has its own split lists in {self._split_dir}, "
                    f"but {file_name} is missing. Add it (one 'S2name,S1name' per line) or remove "
                    "the splits folder to use the official BigEarthNet split."
                )
            names = []
            for line_no, line in enumerate(path.read_text().splitlines(), start=1):
                fields = [f.strip() for f in line.split(",") if f.strip()]
                if not fields:
                    continue
                names.append(fields[0])
                if len(fields) > 1:
                    pairs[fields[0]] = fields[1]
            lists[split] = names
        return lists, pairs

    def _s1_name(self, patch: str) -> str:
        if self._pairs is None:
            if self._custom:
                self._split_lists, self._pairs = self._read_custom_splits()
            else:
                self._pairs = {}
        name = self._pairs.get(patch) or official.official_s2_to_s1().get(patch)
        if name is None:
            raise DataError(
                f"Patch {patch!r} of the archive at {self.root} has no known Sentinel-1 partner: it "
                "is not in the official S2↔S1 table. Give the pairs in splits/train.csv, val.csv "
                "and test.csv as 'S2name,S1name' lines."
            )
        return name

    def _names(self, split: str) -> list[str]:
        if split == "all":
            return list(folder_entries(self.s2_base))
        if self._custom:
            if self._split_lists is None:
                self._split_lists, self._pairs = self._read_custom_splits()
            return list(self._split_lists[split])
        return list(official.official_split(split))

    def _scan(self, split: str, exclude: bool) -> tuple[list[PatchRef], int, list[str]]:
        names = sorted(set(self._names(split)))
        if exclude:
            excluded = official.excluded_patches()
            names = [name for name in names if name not in excluded]
        s2_present, s1_present = folder_entries(self.s2_base), folder_entries(self.s1_base)
        refs, missing = [], []
        for name in names:  # S1 partners are looked up for the S2 folders present only
            s1 = self._s1_name(name) if name in s2_present else None
            if s1 is not None and s1 in s1_present:
                refs.append(self.ref(name, s1))
            else:
                missing.append(name)
        return refs, len(names), missing


def _v2_tile(name: str) -> str:
    """reBEN groups patch folders by the tile part of the name (all but the last two fields)."""
    return name.rsplit("_", 2)[0]


class V2Archive(Archive):
    layout = "v2"

    def __init__(self, root: Path, *, require_complete: bool = False) -> None:
        super().__init__(root, require_complete=require_complete)
        self.s2_base = root / V2_S2_DIR
        self.s1_base = root / V2_S1_DIR
        self._metadata = None
        self._labels: dict[str, tuple[str, ...]] | None = None

    @property
    def split_source(self) -> str:
        return str(self.root / V2_METADATA)

    def stamp(self) -> Stamp:
        """The metadata file, the two patch folders and their tile folders (v2 keeps each patch
        folder in a tile folder: a patch added there changes the tile folder only)."""
        stamp = Stamp()
        stamp.add_value("rules", [self.layout, SCAN_RULES])
        stamp.add_path("metadata", self.root / V2_METADATA, size=True)
        for key, base in (("s2", self.s2_base), ("s1", self.s1_base)):
            stamp.add_path(key, base)
            stamp.add_subfolders(f"{key} tiles", base)
        return stamp

    def ref(self, patch: str, s1_patch: str) -> PatchRef:
        if self._labels is None:  # read once, on demand: only direct reads of a cached split need it
            frame = self.metadata()
            self._labels = dict(zip(frame["patch_id"], (tuple(v) for v in frame["labels"])))
        labels = self._labels.get(patch)
        if labels is None:
            raise DataError(f"Every patch must be in the reBEN metadata file {self.root / V2_METADATA}, "
                            f"but {patch!r} is not (a cache index names it). Delete that cache.")
        return self._ref(patch, s1_patch, labels)

    def _ref(self, patch: str, s1_patch: str, labels: tuple[str, ...]) -> PatchRef:
        return PatchRef(patch, s1_patch, self.s2_base / _v2_tile(patch) / patch,
                        self.s1_base / _v2_tile(s1_patch) / s1_patch, labels)

    def metadata(self):
        """The archive's ``metadata.parquet`` as a pandas DataFrame (read once)."""
        if self._metadata is None:
            import pandas as pd

            path = self.root / V2_METADATA
            try:
                frame = pd.read_parquet(path)
            except Exception as error:  # pyarrow raises several unrelated types
                raise DataError(f"The reBEN metadata file {path} cannot be read ({error}).") from None
            required = {"patch_id", "labels", "split", "s1_name"}
            missing = required - set(frame.columns)
            if missing:
                raise DataError(
                    f"The reBEN metadata file {path} lacks the column(s) {sorted(missing)}; it must "
                    f"have {sorted(required)}. Use the metadata.parquet shipped with BigEarthNet v2."
                )
            self._metadata = frame
        return self._metadata

    def _scan(self, split: str, exclude: bool) -> tuple[list[PatchRef], int, list[str]]:
        refs = self._listed(split, exclude)
        tiles = {folder: folder_entries(folder)
                 for folder in {r.s2_dir.parent for r in refs} | {r.s1_dir.parent for r in refs}}
        present, missing = [], []
        for ref in refs:
            on_disk = ref.s2_dir.name in tiles[ref.s2_dir.parent] and ref.s1_dir.name in tiles[ref.s1_dir.parent]
            (present if on_disk else missing).append(ref if on_disk else ref.patch)
        return present, len(refs), missing

    def _listed(self, split: str, exclude: bool) -> list[PatchRef]:
        frame = self.metadata()
        if split != "all":
            frame = frame[frame["split"] == split]
        if exclude:
            for flag in ("contains_seasonal_snow", "contains_cloud_or_shadow"):
                if flag in frame.columns:
                    frame = frame[~frame[flag].astype(bool)]
        frame = frame.sort_values("patch_id")
        return [self._ref(row.patch_id, row.s1_name, tuple(row.labels))
                for row in frame.itertuples(index=False)]


def label_vector(ref: PatchRef) -> np.ndarray:
    """Multi-hot uint8 (19,) in canonical order: from v2 metadata, or the v1 label JSON."""
    if ref.labels is not None:
        return label_codec.encode(ref.labels, patch=ref.patch)
    metadata = read_label_json(ref.s2_dir, ref.patch)
    names = label_codec.labels_43_to_19(metadata["labels"], patch=ref.patch)
    return label_codec.encode(names, patch=ref.patch)


def open_archive(root: str | os.PathLike[str], *, require_complete: bool = False) -> Archive:
    """Recognise the layout under ``root``; a not-found error names the root and both layouts.
    ``require_complete`` makes a split with patches missing from disk an error."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"The data root {path} does not exist or is not a folder. Pass the folder that "
            f"contains {V1_S2_DIR}/ and {V1_S1_DIR}/ (BigEarthNet v1) or {V2_S2_DIR}/, "
            f"{V2_S1_DIR}/ and {V2_METADATA} (BigEarthNet v2 / reBEN)."
        )
    if (path / V1_S2_DIR).is_dir() and (path / V1_S1_DIR).is_dir():
        return V1Archive(path, require_complete=require_complete)
    if (path / V2_METADATA).is_file() and (path / V2_S2_DIR).is_dir() and (path / V2_S1_DIR).is_dir():
        return V2Archive(path, require_complete=require_complete)
    present = sorted(entry.name for entry in path.iterdir())[:8]
    raise DataError(
        f"{path} is not a BigEarthNet-MM archive: expected the v1 layout ({V1_S2_DIR}/ and "
        f"{V1_S1_DIR}/) or the v2 layout ({V2_S2_DIR}/, {V2_S1_DIR}/ and {V2_METADATA}), but it "
        f"holds {present or 'nothing'}. Point --data at the folder that contains those, or leave "
        "it out to use the demo archive."
    )
