"""Build a BigEarthNet v2 (reBEN) layout from a v1 archive, for tests.

reBEN keeps one GeoTIFF per band, groups patch folders by tile, and replaces the label JSONs
and split CSVs by one ``metadata.parquet``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from mmvit.data.archive import open_archive
from mmvit.data.labels import labels_43_to_19


def write_v2_fixture(v1_root: Path, out: Path, *, snowy: set[str] = frozenset()) -> Path:
    """Copy ``v1_root`` into the v2 layout; patches named in ``snowy`` get the snow flag."""
    archive = open_archive(v1_root)
    rows = []
    for split in ("train", "validation", "test"):
        for ref in archive.patches(split):
            s2_dir = out / "BigEarthNet-S2" / ref.patch.rsplit("_", 2)[0] / ref.patch
            s1_dir = out / "BigEarthNet-S1" / ref.s1_patch.rsplit("_", 2)[0] / ref.s1_patch
            s2_dir.mkdir(parents=True)
            s1_dir.mkdir(parents=True)
            for tif in ref.s2_dir.glob("*.tif"):
                shutil.copy(tif, s2_dir / tif.name)
            for tif in ref.s1_dir.glob("*.tif"):
                shutil.copy(tif, s1_dir / tif.name)
            meta = json.loads((ref.s2_dir / f"{ref.patch}_labels_metadata.json").read_text())
            rows.append({
                "patch_id": ref.patch,
                "labels": labels_43_to_19(meta["labels"]),
                "split": split,
                "country": "Portugal",
                "s1_name": ref.s1_patch,
                "contains_seasonal_snow": ref.patch in snowy,
                "contains_cloud_or_shadow": False,
            })
    pd.DataFrame(rows).to_parquet(out / "metadata.parquet")
    return out
