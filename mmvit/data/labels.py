"""BigEarthNet label nomenclatures: the 43 CORINE classes, the 19-class nomenclature, and
multi-hot encoding in the canonical 19-class order.

Canonical order is the one the BigEarthNet-MM paper defines (``label_indices.json`` of the
archive; ``bigearthnet_common.constants.NEW_LABELS_ORIGINAL_ORDER``), from "Urban fabric" to
"Marine waters". ``bigearthnet_common.constants.NEW_LABELS`` is the *alphabetical* order —
the order the thesis's tables print — and must never be used to index a label vector.
Use :func:`alphabetical_order` when a table should be printed the thesis's way.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from bigearthnet_common import constants as ben

LABELS_19: tuple[str, ...] = tuple(ben.NEW_LABELS_ORIGINAL_ORDER)
"""The 19 classes in canonical order: index ``i`` of every label vector is ``LABELS_19[i]``."""

LABELS_43: tuple[str, ...] = tuple(ben.OLD_LABELS_ORIGINAL_ORDER)
"""The 43 CORINE level-3 classes of the v1 label JSONs."""

NUM_CLASSES = len(LABELS_19)

_OLD_TO_NEW: dict[str, str | None] = dict(ben.OLD2NEW_LABELS_DICT)
_INDEX_19: dict[str, int] = {name: i for i, name in enumerate(LABELS_19)}

CLASS_PATCH_COUNTS: dict[str, int] = {
    "Urban fabric": 74_891,
    "Industrial or commercial units": 11_865,
    "Arable land": 194_148,
    "Permanent crops": 29_350,
    "Pastures": 98_997,
    "Complex cultivation patterns": 104_203,
    "Land principally occupied by agriculture, with significant areas of natural vegetation": 130_637,
    "Agro-forestry areas": 30_649,
    "Broad-leaved forest": 141_300,
    "Coniferous forest": 164_775,
    "Mixed forest": 176_567,
    "Natural grassland and sparsely vegetated areas": 12_022,
    "Moors, heathland and sclerophyllous vegetation": 16_267,
    "Transitional woodland, shrub": 148_950,
    "Beaches, dunes, sands": 1_536,
    "Inland wetlands": 22_100,
    "Coastal wetlands": 1_566,
    "Inland waters": 67_277,
    "Marine waters": 74_877,
}
"""Patches per class in the whole archive (thesis Table A.1, 590,326 patches)."""

ARCHIVE_PATCHES = 590_326


def labels_43_to_19(names: Iterable[str], *, patch: str = "?") -> list[str]:
    """Convert 43-class names to the 19-class names they belong to (canonical order, unique).

    Classes the 19-class nomenclature removed (e.g. "Airports") map to nothing, so a patch can
    end up with no label at all; the official splits exclude such patches.
    """
    found: set[str] = set()
    for name in names:
        if name not in _OLD_TO_NEW:
            from mmvit.errors import DataError

            raise DataError(
                f"Patch {patch!r} has the label {name!r}, which is not one of the 43 BigEarthNet "
                "CORINE classes. The label JSON may be corrupt; re-extract the patch from the "
                "archive or skip unreadable patches with skip_unreadable=True."
            )
        new = _OLD_TO_NEW[name]
        if new is not None:
            found.add(new)
    return [name for name in LABELS_19 if name in found]


def names_43_for(label_19: str) -> list[str]:
    """The 43-class names that the 19-class nomenclature merges into ``label_19``."""
    return [old for old, new in _OLD_TO_NEW.items() if new == label_19]


def encode(names_19: Iterable[str], *, patch: str = "?") -> np.ndarray:
    """Multi-hot vector (uint8, 19) in canonical order from 19-class names."""
    vector = np.zeros(NUM_CLASSES, dtype=np.uint8)
    for name in names_19:
        index = _INDEX_19.get(name)
        if index is None:
            from mmvit.errors import DataError

            raise DataError(
                f"Patch {patch!r} has the label {name!r}, which is not one of the 19 BigEarthNet "
                f"classes ({', '.join(LABELS_19)}). Check the archive's metadata."
            )
        vector[index] = 1
    return vector


def decode(vector: np.ndarray) -> list[str]:
    """19-class names of a multi-hot vector."""
    return [LABELS_19[i] for i in np.flatnonzero(np.asarray(vector) > 0.5)]


def alphabetical_order() -> list[int]:
    """Indices that list the 19 classes alphabetically, as the thesis's tables do."""
    return sorted(range(NUM_CLASSES), key=lambda i: LABELS_19[i])
