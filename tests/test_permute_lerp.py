"""Contract of the AVX-512 permute gathers (:mod:`mmvit.data._permute_lerp`): the one place the
project emits an x86 intrinsic. Each permute pass must equal the scalar loop it replaces, on
every table the loader draws (flips, transposes, edge boxes), and LLVM must really lower it to a
permute instruction (a renamed intrinsic would otherwise fail to compile, or silently slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numba import njit

from mmvit.data import _resample_cpu as kernel
from mmvit.data._permute_lerp import PERMUTE_GATHER, WIDTH
from mmvit.data.batch_augment import draw_boxes, make_tables

SIZE = 120
EDGE_BOXES = [[0, 0, 16, 16], [104, 0, 16, 120], [0, 104, 120, 16], [117, 3, 3, 40], [0, 0, 120, 120]]
needs_avx512 = pytest.mark.skipif(not PERMUTE_GATHER, reason="the permute gathers need AVX-512")


def _tables(count: int, seed: int):
    """Tables of every dihedral element over random crops (the training distribution and much
    smaller ones) and edge boxes."""
    generator = torch.Generator().manual_seed(seed)
    random = count - len(EDGE_BOXES)
    boxes = torch.cat([draw_boxes(random // 2, generator, (0.5, 1.0), (3 / 4, 4 / 3)),
                       draw_boxes(random - random // 2, generator, (0.02, 0.3), (1 / 3, 3.0)),
                       torch.tensor(EDGE_BOXES)])
    dihedral = torch.arange(count) % 8
    tables = make_tables(dihedral, boxes)
    return [t.numpy() for t in (tables.rows0, tables.rows1, tables.row_weight,
                                tables.cols0, tables.cols1, tables.col_weight)]


@njit(boundscheck=True)
def _both_ways(plane, rows0, rows1, row_weight, cols0, cols1, col_weight, shift, scale):
    """Both passes of each sample's table, the permute way and the scalar way; -1 where the
    block tables refused the sample."""
    count = len(rows0)
    permuted = np.zeros((2, count, SIZE, SIZE), np.float32)
    scalar = np.zeros((2, count, SIZE, SIZE), np.float32)
    taken = np.zeros((2, count), np.int64)
    between = np.empty((SIZE, SIZE), np.float32)
    places = np.empty((2, SIZE // WIDTH + 1), np.int64)
    indices = np.empty((2, places.shape[1] * WIDTH), np.int32)
    weights = np.empty(indices.shape[1], np.float32)
    for b in range(count):
        r0, r1 = rows0[b], rows1[b]
        first, last = min(r0.min(), r1.min()), max(r0.max(), r1.max())
        # plain: gather along source rows (the block tables of the columns)
        if kernel._block_tables(cols0[b], cols1[b], col_weight[b], 0, plane.shape[1], places, indices, weights):
            taken[0, b] = 1
            kernel._permute_along_rows(plane, first, last, places, indices, weights, between)
            permuted[0, b, : last - first + 1] = between[: last - first + 1]
            kernel._gather_along_rows(plane, first, last, cols0[b], cols1[b], col_weight[b], between)
            scalar[0, b, : last - first + 1] = between[: last - first + 1]
        # transposed: gather along the blended rows (the block tables of the rows)
        kernel._blend_source_rows(plane, first, last, cols0[b], cols1[b], col_weight[b], between)
        if kernel._block_tables(r0, r1, row_weight[b], first, between.shape[1], places, indices, weights):
            taken[1, b] = 1
            kernel._permute_along_columns(between, places, indices, weights, shift, scale, permuted[1, b])
            kernel._gather_along_columns(between, first, r0, r1, row_weight[b], shift, scale, scalar[1, b])
    return permuted, scalar, taken


@needs_avx512
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_permute_passes_equal_the_scalar_loops(dtype):
    rng = np.random.default_rng(5)
    plane = (rng.random((SIZE, SIZE)) * 10000).astype(dtype)
    tables = _tables(48, seed=6)
    permuted, scalar, taken = _both_ways(plane, *tables, np.float32(2500.0), np.float32(1 / 1700))

    assert taken.all()  # upsampling crops (the loader's and far smaller ones) all fit a window
    torch.testing.assert_close(torch.from_numpy(permuted), torch.from_numpy(scalar), rtol=2e-6, atol=2e-6)
    assert np.abs(scalar).max() > 1  # the comparison saw real values, not zeros
    asm = "\n".join(_both_ways.inspect_asm().values())
    assert "vpermi2ps" in asm or "vpermt2ps" in asm


def test_block_tables_hold_upsampling_and_refuse_the_rest():
    tables = _tables(16, seed=7)
    places = np.empty((2, 8), np.int64)
    indices = np.empty((2, 128), np.int32)
    weights = np.empty(128, np.float32)

    for low, high, weight in (tables[0:3], tables[3:6]):
        for b in range(len(low)):
            assert _block_tables(low[b], high[b], weight[b], 0, SIZE, places, indices, weights)
            assert indices.min() >= 0 and indices.max() < 2 * WIDTH
            assert (places[0] >= 0).all() and (places[0] + 2 * WIDTH <= SIZE).all()
            for block in range(8):  # each index, relative to its window, points where the table did
                start, first = places[:, block]
                np.testing.assert_array_equal(start + indices[0, block * WIDTH:(block + 1) * WIDTH],
                                              low[b, first:first + WIDTH])
                np.testing.assert_array_equal(start + indices[1, block * WIDTH:(block + 1) * WIDTH],
                                              high[b, first:first + WIDTH])
    every_third = np.arange(0, 3 * SIZE, 3)  # downsampling by 3: 16 outputs span 46 sources
    assert not _block_tables(every_third, every_third + 1, weights[:SIZE], 0, 3 * SIZE, places, indices, weights)
    short = np.arange(8)  # fewer outputs than a block
    assert not _block_tables(short, short, weights[:8], 0, SIZE, places, indices, weights)
    narrow = np.arange(SIZE) // 8  # rows narrower than a window
    assert not _block_tables(narrow, narrow, weights[:SIZE], 0, 16, places, indices, weights)


@njit
def _block_tables(low, high, weight, offset, width, places, indices, weights):
    return kernel._block_tables(low, high, weight, offset, width, places, indices, weights)
