"""Contract of the AVX-512 permute gathers (:mod:`mmvit.data._resample_cpu`): the one place the
project emits x86 intrinsics. Each permute pass must equal the scalar loop it replaces, on
every table the loader draws (flips, transposes, edge boxes), and LLVM must really lower it to a
permute instruction (a renamed intrinsic would otherwise fail to compile, or silently slow). The
non-temporal stores must write what normal stores write, and only where they may."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from numba import njit

from mmvit.data import _resample_cpu as kernel
from mmvit.data._resample_cpu import PERMUTE_GATHER, WIDTH
from mmvit.data.batch_augment import Tables, draw_boxes, make_tables, resample_batch, resample_torch

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
    """Both passes of each sample's table, the permute way and the scalar way, and ``taken``:
    per pass and sample, whether the block tables accepted the table."""
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
        if kernel._block_tables(cols0[b], cols1[b], col_weight[b], plane.shape[1], places, indices, weights):
            taken[0, b] = 1
            kernel._permute_along_rows(plane, first, last, places, indices, weights, between)
            permuted[0, b, : last - first + 1] = between[: last - first + 1]
            kernel._gather_along_rows(plane, first, last, cols0[b], cols1[b], col_weight[b], between)
            scalar[0, b, : last - first + 1] = between[: last - first + 1]
        # transposed: gather along source rows with the row table, blend rows into columns
        if kernel._block_tables(r0, r1, row_weight[b], plane.shape[1], places, indices, weights):
            taken[1, b] = 1
            c0, c1 = cols0[b], cols1[b]
            top, bottom = min(c0.min(), c1.min()), max(c0.max(), c1.max())
            kernel._permute_along_rows(plane, top, bottom, places, indices, weights, between)
            kernel._blend_tiles(between, top, c0, c1, col_weight[b], shift, scale, permuted[1, b])
            kernel._blend_source_rows(plane, first, last, c0, c1, col_weight[b], between)
            kernel._gather_along_columns(between, first, r0, r1, row_weight[b], shift, scale, scalar[1, b])
    return permuted, scalar, taken


@needs_avx512
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
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
            assert _block_tables(low[b], high[b], weight[b], SIZE, places, indices, weights)
            assert indices.min() >= 0 and indices.max() < 2 * WIDTH
            assert (places[0] >= 0).all() and (places[0] + 2 * WIDTH <= SIZE).all()
            for block in range(8):  # each index, relative to its window, points where the table did
                start, first = places[:, block]
                np.testing.assert_array_equal(start + indices[0, block * WIDTH:(block + 1) * WIDTH],
                                              low[b, first:first + WIDTH])
                np.testing.assert_array_equal(start + indices[1, block * WIDTH:(block + 1) * WIDTH],
                                              high[b, first:first + WIDTH])
    every_third = np.arange(0, 3 * SIZE, 3)  # downsampling by 3: 16 outputs span 46 sources
    assert not _block_tables(every_third, every_third + 1, weights[:SIZE], 3 * SIZE, places, indices, weights)
    short = np.arange(8)  # fewer outputs than a block
    assert not _block_tables(short, short, weights[:8], SIZE, places, indices, weights)
    narrow = np.arange(SIZE) // 8  # rows narrower than a window
    assert not _block_tables(narrow, narrow, weights[:SIZE], 16, places, indices, weights)


def _misaligned(shape: tuple[int, ...]) -> np.ndarray:
    """A C-contiguous float32 array that starts 4 bytes past a 32-byte boundary."""
    count = int(np.prod(shape))
    flat = torch.empty(count + 16)
    offset = (-flat.data_ptr() // 4) % 8 + 1
    return flat[offset:offset + count].view(shape).numpy()


@needs_avx512
def test_streamed_outputs_equal_cached_ones_and_stream_only_where_aligned():
    # Where every output row is 32-byte aligned (torch's buffers) the kernel writes with
    # non-temporal stores, elsewhere with normal ones: the same values either way.
    generator = torch.Generator().manual_seed(10)
    source = torch.randint(0, 10001, (24, 3, SIZE, SIZE), generator=generator).to(torch.uint16)
    tables = make_tables(torch.arange(24) % 8, draw_boxes(24, generator, (0.05, 1.0), (1 / 3, 3.0)))
    keep = torch.arange(24) % 7 != 3
    shift, scale = torch.tensor([3e3, 2e3, 1e3]), torch.tensor([1e-3, 2e-3, 5e-4])
    arguments = (source.numpy(), np.arange(24), np.arange(3),
                 *(getattr(tables, name).numpy() for name in Tables.__dataclass_fields__),
                 keep.numpy(), shift.numpy(), scale.numpy())
    aligned = torch.full((24, 3, SIZE, SIZE), np.nan).numpy()
    misaligned = _misaligned(aligned.shape)
    misaligned[:] = np.nan

    assert _streamable(aligned) and not _streamable(misaligned)
    assert not _streamable(aligned[:, :, :, :112])  # rows not contiguous
    kernel.resample(*arguments, aligned)
    kernel.resample(*arguments, misaligned)

    np.testing.assert_array_equal(aligned, misaligned)
    assert not np.isnan(aligned).any() and (aligned[3] == 0).all() and np.abs(aligned).max() > 1
    torch.testing.assert_close(torch.from_numpy(aligned), resample_torch(source, tables, keep, shift, scale),
                               rtol=0, atol=1e-4)
    asm = "\n".join(kernel.resample.inspect_asm().values())
    assert "vmovntps" in asm and "sfence" in asm


@needs_avx512
@pytest.mark.parametrize("dtype", [torch.uint16, torch.float32])
def test_streamed_normalisation_equals_cached_and_the_formula(dtype):
    generator = torch.Generator().manual_seed(11)
    source = (torch.rand((9, 4, SIZE, SIZE), generator=generator) * 10000).to(dtype)
    rows, channels = np.array([8, 1, 4]), np.array([3, 0])
    shift, scale = np.array([2e3, 5e3], np.float32), np.array([1e-3, 4e-4], np.float32)
    aligned = torch.full((3, 2, SIZE, SIZE), np.nan).numpy()
    misaligned = _misaligned(aligned.shape)

    kernel.normalise(source.numpy(), rows, channels, shift, scale, aligned)
    kernel.normalise(source.numpy(), rows, channels, shift, scale, misaligned)

    np.testing.assert_array_equal(aligned, misaligned)
    expected = (source[rows][:, channels].float() - torch.from_numpy(shift).view(1, -1, 1, 1)) \
        * torch.from_numpy(scale).view(1, -1, 1, 1)
    torch.testing.assert_close(torch.from_numpy(aligned), expected, rtol=1e-6, atol=1e-6)
    assert "vmovntps" in "\n".join(kernel.normalise.inspect_asm().values())


@njit
def _streamable(out):
    return kernel._streamable(out)


@njit
def _block_tables(low, high, weight, width, places, indices, weights):
    return kernel._block_tables(low, high, weight, width, places, indices, weights)


def _arbitrary_tables(count: int, seed: int) -> Tables:
    """Tables no crop produces: indices anywhere in the patch, in any order (a window of 32
    cannot hold them), random weights and transposes."""
    generator = torch.Generator().manual_seed(seed)

    def index() -> torch.Tensor:
        return torch.randint(SIZE, (count, SIZE), generator=generator)

    def weight() -> torch.Tensor:
        return torch.rand(count, SIZE, generator=generator)

    return Tables(index(), index(), weight(), index(), index(), weight(),
                  torch.rand(count, generator=generator) < 0.5)


def test_the_kernel_takes_the_scalar_loops_where_a_window_cannot_hold_the_table():
    # On AVX-512 hosts this runs the kernel's scalar branch (the block tables refuse these
    # tables); elsewhere it is the only branch. resample_torch defines the semantics.
    generator = torch.Generator().manual_seed(8)
    source = torch.randint(0, 10001, (6, 3, SIZE, SIZE), generator=generator).to(torch.uint16)
    tables, keep = _arbitrary_tables(6, seed=9), torch.tensor([True, True, True, True, True, False])
    shift, scale = torch.tensor([3000.0, 2000.0, 1000.0]), torch.tensor([1e-3, 2e-3, 5e-4])

    actual = resample_batch(source, tables, keep, shift, scale)

    torch.testing.assert_close(actual, resample_torch(source, tables, keep, shift, scale), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_the_kernel_without_avx512_equals_the_torch_path(tmp_path):
    # NUMBA_ENABLE_AVX=0 compiles for no AVX at all: PERMUTE_GATHER is false and the kernels are
    # the scalar loops and normal stores only (a fresh numba cache, since the flag is frozen
    # into compiled code).
    script = (
        "import torch\n"
        "from mmvit.data import _resample_cpu\n"
        "from mmvit.data.batch_augment import (draw_boxes, make_tables, normalise_batch, resample_batch,\n"
        "                                      resample_torch)\n"
        "assert not _resample_cpu.PERMUTE_GATHER\n"
        "g = torch.Generator().manual_seed(4)\n"
        "source = torch.randint(0, 10001, (16, 2, 120, 120), generator=g).to(torch.uint16)\n"
        "tables = make_tables(torch.arange(16) % 8, draw_boxes(16, g, (0.05, 1.0), (1 / 3, 3.0)))\n"
        "keep, shift, scale = torch.ones(16, dtype=torch.bool), torch.tensor([3e3, 2e3]), torch.tensor([1e-3, 2e-3])\n"
        "torch.testing.assert_close(resample_batch(source, tables, keep, shift, scale),\n"
        "                           resample_torch(source, tables, keep, shift, scale), rtol=0, atol=1e-4)\n"
        "torch.testing.assert_close(normalise_batch(source, shift, scale),\n"
        "                           (source.float() - shift.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1))\n"
        "print('scalar kernel ok')\n"
    )
    env = {**os.environ, "NUMBA_ENABLE_AVX": "0", "NUMBA_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "scalar kernel ok" in result.stdout
