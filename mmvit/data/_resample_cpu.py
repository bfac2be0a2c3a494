"""The CPU kernels of :mod:`mmvit.data.batch_augment`: gather, normalise, dihedral, crop and
resize a batch in one pass, in parallel over samples (numba; compiled once, cached on disk).

Both kernels read each sample straight from the memory-mapped cache (``cache[index[b]]``), so a
batch is never copied into a staging buffer first: on 2 cores that copy cost as much as a fifth
of an augmented batch.

Per sample and channel the separable bilinear resampling runs in two sweeps, one that the
compiler vectorises (a weighted sum of two whole rows) and one gather inside a row of the small
intermediate plane. Which is which depends on the dihedral transform: a plain sample gathers
along the source rows first (only the rows the crop touches) and then blends whole intermediate
rows into output rows; a transposed sample blends whole source rows (its output columns) first
and then gathers along them, in 16 × 16 tiles transposed in registers. So no sample needs a
transposed copy of its source. On AVX-512 CPUs the gathers are permutes
(:mod:`mmvit.data._permute_lerp`, 5–10× faster); elsewhere, and for any table a permute window
cannot hold, they are the scalar loops below.
Called from one thread at a time (the work-queue threading layer below is not re-entrant).
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

from mmvit.data._permute_lerp import PERMUTE_GATHER, WIDTH, WINDOW, lerp16, lerp16_tile

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


@njit(inline="always", boundscheck=False)
def _block_tables(low, high, weight, offset, width, places, indices, weights):
    """The permute gather's tables for one axis. Per block of 16 outputs (the last block ends
    at the last output): ``places[:, block]`` = (window start in a row of ``width`` values, first
    output), ``indices[:, block * 16 + t]`` = low and high index minus ``offset`` relative to the
    window, ``weights`` likewise. False where a block spans more than one window (a
    downsampling table, or rows shorter than a window), which then takes the scalar loop."""
    count = len(low)
    if count < WIDTH:
        return False
    for block in range(places.shape[1]):
        first = min(block * WIDTH, count - WIDTH)
        lowest, highest = low[first], low[first]
        for t in range(first, first + WIDTH):
            lowest = min(lowest, low[t], high[t])
            highest = max(highest, low[t], high[t])
        start = min(lowest - offset, width - WINDOW)
        if start < 0 or highest - offset - start >= WINDOW:
            return False
        places[0, block], places[1, block] = start, first
        for t in range(WIDTH):
            indices[0, block * WIDTH + t] = low[first + t] - offset - start
            indices[1, block * WIDTH + t] = high[first + t] - offset - start
            weights[block * WIDTH + t] = weight[first + t]
    return True


@njit(inline="always", boundscheck=False)
def _permute_along_rows(plane, first, last, places, indices, weights, between):
    """:func:`_gather_along_rows` with the AVX-512 permute gather."""
    starts, firsts, low, high = places[0], places[1], indices[0], indices[1]
    for y in range(first, last + 1):
        row, target = plane[y], between[y - first]
        for block in range(len(starts)):
            lerp16(row, starts[block], low, high, weights, block * WIDTH, target, firsts[block])


@njit(inline="always", boundscheck=False)
def _permute_along_columns(between, places, indices, weights, shift, scale, out):
    """:func:`_gather_along_columns` with the AVX-512 permute gather, in 16 × 16 tiles
    transposed in registers (the one transposition a transposed sample needs)."""
    starts, firsts, low, high = places[0], places[1], indices[0], indices[1]
    width = out.shape[1]
    for tile in range((width + WIDTH - 1) // WIDTH):
        column = min(tile * WIDTH, width - WIDTH)
        for block in range(len(starts)):
            lerp16_tile(between, column, starts[block], low, high, weights, block * WIDTH, out, firsts[block],
                        shift, scale)


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
        axis = height if transpose[b] else width  # the axis the gather runs along
        places = np.empty((2, (axis + WIDTH - 1) // WIDTH), np.int64)
        indices = np.empty((2, places.shape[1] * WIDTH), np.int32)
        weights = np.empty(indices.shape[1], np.float32)
        permute = PERMUTE_GATHER and (
            _block_tables(r0, r1, row_weight[b], first, between.shape[1], places, indices, weights) if transpose[b]
            else _block_tables(cols0[b], cols1[b], col_weight[b], 0, cache.shape[3], places, indices, weights))
        for c in range(count):
            if not keep[b]:
                out[b, c] = 0.0
                continue
            plane = cache[index[b], channels[c]]
            if transpose[b]:
                _blend_source_rows(plane, first, last, cols0[b], cols1[b], col_weight[b], between)
                if PERMUTE_GATHER and permute:
                    _permute_along_columns(between, places, indices, weights, shift[c], scale[c], out[b, c])
                else:
                    _gather_along_columns(between, first, r0, r1, row_weight[b], shift[c], scale[c], out[b, c])
            else:
                if PERMUTE_GATHER and permute:
                    _permute_along_rows(plane, first, last, places, indices, weights, between)
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
