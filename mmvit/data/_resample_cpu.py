"""The CPU kernels of :mod:`mmvit.data.batch_augment`: gather, normalise, dihedral, crop and
resize a batch in one pass, in parallel over samples (numba; compiled once, cached on disk).

Both kernels read each sample straight from the memory-mapped cache (``cache[index[b]]``), so a
batch is never copied into a staging buffer first: on 2 cores that copy cost as much as a fifth
of an augmented batch.

Per sample and channel the separable bilinear resampling runs in two sweeps, one that the
compiler vectorises (a weighted sum of two whole rows) and one scalar gather inside a row of
the small intermediate plane. Which is which depends on the dihedral transform: a plain sample
gathers along the source rows first (only the rows the crop touches) and then blends whole
intermediate rows into output rows; a transposed sample blends whole source rows (its output
columns) first and then gathers along them. So no sample needs a transposed copy of its source.
Called from one thread at a time (the work-queue threading layer below is not re-entrant).
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

if "NUMBA_THREADING_LAYER" not in os.environ:
    # numba's default OpenMP pool spins between kernels: two trials side by side on one
    # machine (Ray) then ran at a third of their speed. Its own work queue sleeps instead.
    numba.config.THREADING_LAYER = "workqueue"


@njit(inline="always", fastmath=True, boundscheck=False)
def _gather_along_rows(plane, first, last, cols0, cols1, col_weight, between):
    """``between[y - first, j]`` = row ``y`` of ``plane`` sampled at the column table."""
    for y in range(first, last + 1):
        row, target = plane[y], between[y - first]
        for j in range(len(cols0)):
            a = np.float32(row[cols0[j]])
            target[j] = a + col_weight[j] * (np.float32(row[cols1[j]]) - a)


@njit(inline="always", fastmath=True, boundscheck=False)
def _blend_rows(between, first, rows0, rows1, row_weight, shift, scale, out):
    """``out[i]`` = normalised blend of two whole rows of ``between`` (vectorised)."""
    for i in range(out.shape[0]):
        low, high, weight = between[rows0[i] - first], between[rows1[i] - first], row_weight[i]
        target = out[i]
        for x in range(len(target)):
            a = low[x]
            target[x] = (a + weight * (high[x] - a) - shift) * scale


@njit(inline="always", fastmath=True, boundscheck=False)
def _blend_source_rows(plane, first, last, cols0, cols1, col_weight, between):
    """Transposed sample: ``between[j, x - first]`` = blend of source rows ``cols0[j]`` and
    ``cols1[j]`` (output column ``j``) over the columns the crop touches (vectorised)."""
    for j in range(len(cols0)):
        low, high, weight = plane[cols0[j]], plane[cols1[j]], col_weight[j]
        target = between[j]
        for x in range(first, last + 1):
            a = np.float32(low[x])
            target[x - first] = a + weight * (np.float32(high[x]) - a)


@njit(inline="always", fastmath=True, boundscheck=False)
def _gather_along_columns(between, first, rows0, rows1, row_weight, shift, scale, out):
    """Transposed sample: ``out[i, j]`` = normalised ``between[j]`` sampled at row table entry ``i``."""
    for i in range(out.shape[0]):
        low, high, weight = rows0[i] - first, rows1[i] - first, row_weight[i]
        target = out[i]
        for j in range(target.shape[0]):
            a = between[j, low]
            target[j] = (a + weight * (between[j, high] - a) - shift) * scale


@njit(parallel=True, cache=True, nogil=True, fastmath=True, boundscheck=False)
def resample(cache, index, channels, rows0, rows1, row_weight, cols0, cols1, col_weight, transpose,
             keep, shift, scale, out):  # pragma: no cover - compiled
    """``out[b, c]`` = normalised ``cache[index[b], channels[c]]`` (transposed where
    ``transpose[b]``) sampled at the row and column tables; zeros where not ``keep[b]``."""
    batch, count, height, width = out.shape
    for b in prange(batch):
        between = np.empty((max(height, cache.shape[2]), max(width, cache.shape[3])), np.float32)
        r0, r1 = rows0[b], rows1[b]
        first, last = min(r0.min(), r1.min()), max(r0.max(), r1.max())
        for c in range(count):
            if not keep[b]:
                out[b, c] = 0.0
                continue
            plane = cache[index[b], channels[c]]
            if transpose[b]:
                _blend_source_rows(plane, first, last, cols0[b], cols1[b], col_weight[b], between)
                _gather_along_columns(between, first, r0, r1, row_weight[b], shift[c], scale[c], out[b, c])
            else:
                _gather_along_rows(plane, first, last, cols0[b], cols1[b], col_weight[b], between)
                _blend_rows(between, first, r0, r1, row_weight[b], shift[c], scale[c], out[b, c])


@njit(parallel=True, cache=True, nogil=True, fastmath=True, boundscheck=False)
def normalise(cache, index, channels, shift, scale, out):  # pragma: no cover - compiled
    """``out[b, c] = (cache[index[b], channels[c]] - shift[c]) * scale[c]`` in one pass
    (evaluation batches)."""
    batch, count, height, width = out.shape
    for b in prange(batch):
        for c in range(count):
            m, s = shift[c], scale[c]
            plane, target = cache[index[b], channels[c]], out[b, c]
            for i in range(height):
                for j in range(width):
                    target[i, j] = (np.float32(plane[i, j]) - m) * s
