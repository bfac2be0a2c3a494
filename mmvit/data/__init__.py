"""BigEarthNet-MM data: archives (v1, v2), the dataset, the cache, transforms, the demo archive.

Exports resolve lazily so that cache-conversion worker processes import no torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BigEarthNetMM": "mmvit.data.bigearthnet",
    "open_archive": "mmvit.data.archive",
    "SplitCache": "mmvit.data.cache",
    "write_demo_archive": "mmvit.data.demo",
    "ensure_demo_archive": "mmvit.data.demo",
    "build_transforms": "mmvit.data.transforms",
    "BatchLoader": "mmvit.data.loader",
    "split_arrays": "mmvit.data.loader",
    "AugmentOptions": "mmvit.data.batch_augment",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmvit.data' has no attribute {name!r}")
