"""Find what a BigEarthNet-MM archive holds: its layout, its patches per split, S1↔S2 pairs.

Two layouts are recognised under ``root``:

* **v1** — ``BigEarthNet-v1.0/<S2 patch>/`` and ``BigEarthNet-S1-v1.0/<S1 patch>/``, one GeoTIFF
  per band and a ``<patch>_labels_metadata.json`` with 43-class names. Splits and S2↔S1 pairs
  come from ``root/splits/{train,val,test}.csv`` when present (``S2name,S1name`` per line),
  otherwise from the official lists shipped by ``bigearthnet-common``.
* **v2 (reBEN)** — ``BigEarthNet-S2/<tile>/<patch_id>/``, ``BigEarthNet-S1/<tile>/<s1_name>/``
  and ``metadata.parquet`` (``patch_id``, ``labels`` as 19-class names, ``split`` as
  train/validation/test, ``s1_name``, snow and cloud flags).

An archive never opens band files; :mod:`mmvit.data.reader` does.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmvit.data import labels as label_codec
from mmvit.data import splits as official
from mmvit.data.reader import read_label_json
from mmvit.errors import DataError

V1_S2_DIR = "BigEarthNet-v1.0"
V1_S1_DIR = "BigEarthNet-S1-v1.0"
V2_S2_DIR = "BigEarthNet-S2"
V2_S1_DIR = "BigEarthNet-S1"
V2_METADATA = "metadata.parquet"


@dataclass(frozen=True)
class PatchRef:
    """Where one S2/S1 patch pair lives; ``labels`` is None where they sit in a v1 JSON."""

    patch: str
    s1_patch: str
    s2_dir: Path
    s1_dir: Path
    labels: tuple[str, ...] | None = None


class Archive(ABC):
    """A BigEarthNet-MM archive on disk (use :func:`open_archive`)."""

    layout: str = ""

    def __init__(self, root: Path) -> None:
        self.root = root

    @abstractmethod
    def patches(self, split: str, *, exclude: bool = True) -> list[PatchRef]:
        """Patch pairs of a split, sorted by S2 name; ``exclude`` drops snow/cloud/unlabelled."""

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

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.s2_base = root / V1_S2_DIR
        self.s1_base = root / V1_S1_DIR
        self._split_dir = root / "splits"
        self._custom = (self._split_dir / official.SPLIT_FILES["train"]).is_file()
        self._pairs: dict[str, str] | None = None
        self._split_lists: dict[str, list[str]] | None = None

    @property
    def split_source(self) -> str:
        return str(self._split_dir) if self._custom else "bigearthnet-common official v1 split"

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
            return [entry.name for entry in os.scandir(self.s2_base) if entry.is_dir()]
        if self._custom:
            if self._split_lists is None:
                self._split_lists, self._pairs = self._read_custom_splits()
            return list(self._split_lists[split])
        return list(official.official_split(split))

    def patches(self, split: str, *, exclude: bool = True) -> list[PatchRef]:
        split = official.normalise_split(split)
        names = sorted(set(self._names(split)))
        if exclude:
            excluded = official.excluded_patches()
            names = [name for name in names if name not in excluded]
        refs = []
        for name in names:
            s1 = self._s1_name(name)
            refs.append(PatchRef(name, s1, self.s2_base / name, self.s1_base / s1))
        return refs


def _v2_tile(name: str) -> str:
    """reBEN groups patch folders by the tile part of the name (all but the last two fields)."""
    return name.rsplit("_", 2)[0]


class V2Archive(Archive):
    layout = "v2"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.s2_base = root / V2_S2_DIR
        self.s1_base = root / V2_S1_DIR
        self._metadata = None

    @property
    def split_source(self) -> str:
        return str(self.root / V2_METADATA)

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

    def patches(self, split: str, *, exclude: bool = True) -> list[PatchRef]:
        split = official.normalise_split(split)
        frame = self.metadata()
        if split != "all":
            frame = frame[frame["split"] == split]
        if exclude:
            for flag in ("contains_seasonal_snow", "contains_cloud_or_shadow"):
                if flag in frame.columns:
                    frame = frame[~frame[flag].astype(bool)]
        frame = frame.sort_values("patch_id")
        return [
            PatchRef(
                patch=row.patch_id,
                s1_patch=row.s1_name,
                s2_dir=self.s2_base / _v2_tile(row.patch_id) / row.patch_id,
                s1_dir=self.s1_base / _v2_tile(row.s1_name) / row.s1_name,
                labels=tuple(row.labels),
            )
            for row in frame.itertuples(index=False)
        ]


def label_vector(ref: PatchRef) -> np.ndarray:
    """Multi-hot uint8 (19,) in canonical order: from v2 metadata, or the v1 label JSON."""
    if ref.labels is not None:
        return label_codec.encode(ref.labels, patch=ref.patch)
    metadata = read_label_json(ref.s2_dir, ref.patch)
    names = label_codec.labels_43_to_19(metadata["labels"], patch=ref.patch)
    return label_codec.encode(names, patch=ref.patch)


def open_archive(root: str | os.PathLike[str]) -> Archive:
    """Recognise the layout under ``root``; a not-found error names the root and both layouts."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"The data root {path} does not exist or is not a folder. Pass the folder that "
            f"contains {V1_S2_DIR}/ and {V1_S1_DIR}/ (BigEarthNet v1) or {V2_S2_DIR}/, "
            f"{V2_S1_DIR}/ and {V2_METADATA} (BigEarthNet v2 / reBEN)."
        )
    if (path / V1_S2_DIR).is_dir() and (path / V1_S1_DIR).is_dir():
        return V1Archive(path)
    if (path / V2_METADATA).is_file() and (path / V2_S2_DIR).is_dir() and (path / V2_S1_DIR).is_dir():
        return V2Archive(path)
    present = sorted(entry.name for entry in path.iterdir())[:8]
    raise DataError(
        f"{path} is not a BigEarthNet-MM archive: expected the v1 layout ({V1_S2_DIR}/ and "
        f"{V1_S1_DIR}/) or the v2 layout ({V2_S2_DIR}/, {V2_S1_DIR}/ and {V2_METADATA}), but it "
        f"holds {present or 'nothing'}. Point --data at the folder that contains those, or leave "
        "it out to use the demo archive."
    )
