"""The CPU kernel of :mod:`mmvit.data.batch_augment`: normalise, dihedral, crop and resize a
batch in one pass, in parallel over samples (numba; compiled once, cached on disk).

Per sample and channel it runs the separable bilinear resampling in two sweeps that the
compiler vectorises: rows (a weighted sum of two whole source rows, normalised on the way),
then columns (a gather inside one 120-float row). A transposed source is copied to a small
contiguous plane first so that both sweeps read memory in order. Called from one thread at a
time (the work-queue threading layer below is not re-entrant).
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
def _rows(plane, rows0, rows1, row_weight, shift, scale, out):
    for i in range(out.shape[0]):
        low, high, weight = rows0[i], rows1[i], row_weight[i]
        for x in range(out.shape[1]):
            a = np.float32(plane[low, x])
            out[i, x] = (a + weight * (np.float32(plane[high, x]) - a) - shift) * scale


@njit(inline="always", fastmath=True, boundscheck=False)
def _cols(rows, cols0, cols1, col_weight, out):
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            a = rows[i, cols0[j]]
            out[i, j] = a + col_weight[j] * (rows[i, cols1[j]] - a)


@njit(parallel=True, cache=True, nogil=True, fastmath=True, boundscheck=False)
def resample(source, rows0, rows1, row_weight, cols0, cols1, col_weight, transpose, keep,
             shift, scale, out):  # pragma: no cover - compiled
    """``out[b, c]`` = normalised ``source[b, c]`` (transposed where ``transpose[b]``) sampled
    at the row and column tables; zeros where not ``keep[b]``."""
    batch, channels, height, width = out.shape
    for b in prange(batch):
        rows = np.empty((height, source.shape[3]), np.float32)
        plane = np.empty((source.shape[2], source.shape[3]), source.dtype)
        for c in range(channels):
            if not keep[b]:
                out[b, c] = 0.0
                continue
            if transpose[b]:
                original = source[b, c]
                for y in range(original.shape[0]):
                    for x in range(original.shape[1]):
                        plane[x, y] = original[y, x]
                _rows(plane, rows0[b], rows1[b], row_weight[b], shift[c], scale[c], rows)
            else:
                _rows(source[b, c], rows0[b], rows1[b], row_weight[b], shift[c], scale[c], rows)
            _cols(rows, cols0[b], cols1[b], col_weight[b], out[b, c])


@njit(parallel=True, cache=True, nogil=True, fastmath=True, boundscheck=False)
def normalise(source, shift, scale, out):  # pragma: no cover - compiled
    """``out[b, c] = (source[b, c] - shift[c]) * scale[c]`` in one pass (evaluation batches)."""
    batch, channels, height, width = out.shape
    for b in prange(batch):
        for c in range(channels):
            m, s = shift[c], scale[c]
            plane, target = source[b, c], out[b, c]
            for i in range(height):
                for j in range(width):
                    target[i, j] = (np.float32(plane[i, j]) - m) * s
