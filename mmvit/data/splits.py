"""Official BigEarthNet splits and exclusion lists, from ``bigearthnet-common``.

The v1 official split (train 269,695 / validation 123,723 / test 125,866 S2 patches) already
leaves out patches with seasonal snow, cloud or cloud shadow, and patches with no label in the
19-class nomenclature. An archive can bring its own split lists (``splits/train.csv`` …, one
``S2name[,S1name]`` per line, as the demo archive does); the exclusion lists still apply.
"""

from __future__ import annotations

import functools

from bigearthnet_common import base as ben

SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_FILES: dict[str, str] = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
"""v1 split list file names, as the BigEarthNet-MM tools name them."""

_ALIASES = {"val": "validation", "valid": "validation"}


def normalise_split(split: str) -> str:
    """``train`` / ``validation`` / ``test`` / ``all`` (``val`` accepted for validation)."""
    from mmvit.errors import DataError

    name = _ALIASES.get(split, split)
    if name not in (*SPLITS, "all"):
        raise DataError(
            f"split must be one of train, validation, test or all, but got {split!r}."
        )
    return name


@functools.cache
def official_split(split: str) -> frozenset[str]:
    """S2 patch names of an official v1 split (exclusions already applied)."""
    loaders = {
        "train": ben.get_s2_patches_from_original_train_split,
        "validation": ben.get_s2_patches_from_original_validation_split,
        "test": ben.get_s2_patches_from_original_test_split,
    }
    return frozenset(loaders[split]())


@functools.cache
def excluded_patches() -> frozenset[str]:
    """S2 names of patches with snow, cloud/shadow, or no 19-class label. A pair is excluded by
    its S2 name: bigearthnet-common's S1 lists are the S1 partners of these same patches, and
    building them decompresses the 590,326-pair name table (14 s in every trial process)."""
    return frozenset(
        ben.get_s2_patches_with_seasonal_snow()
        | ben.get_s2_patches_with_cloud_and_shadow()
        | ben.get_s2_patches_with_no_19_class_target()
    )


@functools.cache
def official_s2_to_s1() -> dict[str, str]:
    """The archive's S2 → S1 patch name table (590,326 pairs)."""
    return ben.get_complete_s2_to_s1_patch_name_mapping()
