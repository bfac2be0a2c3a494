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
and then gathers along them. So no sample needs a transposed copy of its source.

**AVX-512 permute gathers.** Sampling a row at a table of source indices is a gather, and
neither numba nor LLVM vectorises it (hardware gathers are slow on the CPUs we measured, and
there are none for 16-bit values): as scalar code it cost ~1.2–2 ns an output value, ~90 % of
the kernel. But an upsampling crop moves at most one source pixel per output pixel, so the 32
indices that 16 outputs need (low and high neighbour) lie in a window of 17 source values. The
window is loaded as two vectors (uint16 converted on the way) and AVX-512's two-table permute
(``vpermi2ps``) picks each output's neighbours from it, then one blend: 5–10× faster than the
scalar loop, with the same float32 arithmetic (``tests/test_permute_gathers.py`` compares the
two). With AVX-512 both kinds of sample gather along source rows first: a plain sample with its
column table, a transposed one with its row table; a transposed sample then blends whole rows
into output columns in 16 × 16 tiles transposed in registers.

The intrinsics are the one place with hand-written LLVM IR (numba's public ``@intrinsic``
and llvmlite), behind :data:`PERMUTE_GATHER`: true only where numba compiles for AVX-512 (the
host's features, or ``NUMBA_CPU_FEATURES`` / ``NUMBA_ENABLE_AVX`` where set; numba's on-disk
cache is keyed by the same features). Elsewhere, and for any table a window cannot hold, the
scalar loops run; numba prunes the branch not taken before compiling. They live in this file
because numba's cache of a kernel is invalidated by changes to the kernel's own file only.
Called from one thread at a time (the work-queue threading layer below is not re-entrant).
"""

from __future__ import annotations

import os

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

if "NUMBA_THREADING_LAYER" not in os.environ:
    # numba's default OpenMP pool spins between kernels: two trials side by side on one
    # machine (Ray) then ran at a third of their speed. Its own work queue sleeps instead.
    numba.config.THREADING_LAYER = "workqueue"


# ------------------------------------------------------------------ AVX-512 permute gathers

WIDTH = 16  # outputs per call: one 512-bit vector of float32
WINDOW = 2 * WIDTH  # source values a call can pick from


def _compiled_features() -> list[str]:
    """The CPU features numba compiles for: its own setting, else the host's (no AVX at all
    where ``NUMBA_ENABLE_AVX=0``)."""
    if numba.config.CPU_FEATURES is not None:
        return numba.config.CPU_FEATURES.split(",")
    if not numba.config.ENABLE_AVX:
        return []
    return llvmlite.binding.get_host_cpu_features().flatten().split(",")


PERMUTE_GATHER = "+avx512f" in _compiled_features()
_VPERMI2PS = "llvm.x86.avx512.vpermi2var.ps.512"


def _blend(context, builder, element, window_at, tables, table_at):
    """IR of 16 blended samples: the 32 values of numba type ``element`` from pointer
    ``window_at`` as float32, two permutes with the (low, high, weight) ``tables`` arrays at
    ``table_at``, a blend."""
    f32, i32 = ir.FloatType(), ir.IntType(32)
    floats, ints = ir.VectorType(f32, WIDTH), ir.VectorType(i32, WIDTH)

    def load(pointer, vector):
        return builder.load(builder.bitcast(pointer, vector.as_pointer()), align=1)

    window = load(window_at, ir.VectorType(context.get_value_type(element), WINDOW))
    wide = ir.VectorType(f32, WINDOW)
    if isinstance(element, types.Integer):  # uint16 S2 (one load, widened on the way)
        window = (builder.sitofp if element.signed else builder.uitofp)(window, wide)
    elif element != types.float32:
        window = builder.fptrunc(window, wide)
    first = builder.shuffle_vector(window, window, ir.Constant(ints, list(range(WIDTH))))
    second = builder.shuffle_vector(window, window, ir.Constant(ints, list(range(WIDTH, WINDOW))))
    low, high, weight = (load(builder.gep(table.data, [table_at]), kind)
                         for table, kind in zip(tables, (ints, ints, floats)))
    permute = builder.module.globals.get(_VPERMI2PS) or ir.Function(
        builder.module, ir.FunctionType(floats, [floats, ints, floats]), _VPERMI2PS)
    a = builder.call(permute, [first, low, second])
    b = builder.call(permute, [first, high, second])
    return builder.fadd(a, builder.fmul(weight, builder.fsub(b, a)))


def _arrays(context, builder, kinds, values):
    return [context.make_array(kind)(context, builder, value) for kind, value in zip(kinds, values)]


def _pointer(context, builder, kind, array, indices):
    """Pointer to ``array[indices]`` (numba's own address arithmetic)."""
    indices = [context.cast(builder, value, value_type, types.intp) for value, value_type in indices]
    return cgutils.get_item_pointer2(context, builder, array.data, cgutils.unpack_tuple(builder, array.shape),
                                     cgutils.unpack_tuple(builder, array.strides), kind.layout, indices)


@intrinsic
def lerp16(typingctx, row, start, low, high, weight, table_at, out, out_at):
    """``out[out_at + t] = a + weight[table_at + t] * (b - a)`` for t < 16, with
    ``a = row[start + low[table_at + t]]`` and ``b = row[start + high[table_at + t]]``.

    ``row[start:start + 32]`` must lie inside ``row``; ``low`` and ``high`` are int32 in [0, 32),
    ``weight`` and ``out`` contiguous float32. Nothing is bounds-checked."""
    signature = types.void(row, start, low, high, weight, table_at, out, out_at)

    def codegen(context, builder, sig, args):
        source, *tables, target = _arrays(context, builder, [sig.args[i] for i in (0, 2, 3, 4, 6)],
                                          [args[i] for i in (0, 2, 3, 4, 6)])
        window_at = _pointer(context, builder, sig.args[0], source, [(args[1], sig.args[1])])
        blended = _blend(context, builder, sig.args[0].dtype, window_at, tables, args[5])
        pointer = _pointer(context, builder, sig.args[6], target, [(args[7], sig.args[7])])
        builder.store(blended, builder.bitcast(pointer, blended.type.as_pointer()), align=1)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def blend_rows_tile(typingctx, rows, low, high, weight, offset, column, top, plane, shift, scale):
    """The transposing blend, one 16 × 16 tile: for k, t < 16 and j = ``column + k``,
    ``plane[top + t, j]`` = normalised ``(v - shift) * scale`` of the blend of
    ``rows[low[j] - offset, top + t]`` and ``rows[high[j] - offset, top + t]`` by ``weight[j]``.

    A transposed sample's output column j blends two whole rows of its intermediate plane; the
    16 blended vectors are transposed in registers and stored as 16 row segments."""
    signature = types.void(rows, low, high, weight, offset, column, top, plane, shift, scale)

    def codegen(context, builder, sig, args):
        source, low_table, high_table, weights, target = _arrays(
            context, builder, [sig.args[i] for i in (0, 1, 2, 3, 7)], [args[i] for i in (0, 1, 2, 3, 7)])
        offset, column, top = (context.cast(builder, args[i], sig.args[i], types.intp) for i in (4, 5, 6))
        floats = ir.VectorType(ir.FloatType(), WIDTH)

        def entry(array, kind, index):
            return builder.load(_pointer(context, builder, kind, array, [(index, types.intp)]))

        def row_segment(index):
            row = builder.sub(context.cast(builder, index, sig.args[1].dtype, types.intp), offset)
            pointer = _pointer(context, builder, sig.args[0], source, [(row, types.intp), (top, types.intp)])
            return builder.load(builder.bitcast(pointer, floats.as_pointer()), align=1)

        vectors = []
        for k in range(WIDTH):
            j = builder.add(column, ir.Constant(column.type, k))
            a = row_segment(entry(low_table, sig.args[1], j))
            b = row_segment(entry(high_table, sig.args[2], j))
            weight = _splat(builder, context.cast(builder, entry(weights, sig.args[3], j), sig.args[3].dtype,
                                                  types.float32))
            vectors.append(builder.fadd(a, builder.fmul(weight, builder.fsub(b, a))))
        _store_tile(context, builder, sig.args[7], target, _transpose(builder, vectors), top, column,
                    *(context.cast(builder, args[i], sig.args[i], types.float32) for i in (8, 9)))
        return context.get_dummy_value()

    return signature, codegen


def _store_tile(context, builder, kind, target, rows, top, column, shift, scale):
    """Store 16 vectors, normalised ``(v - shift) * scale``, at ``target[top + t, column:column + 16]``."""
    shift, scale = _splat(builder, shift), _splat(builder, scale)
    for t, vector in enumerate(rows):
        normalised = builder.fmul(builder.fsub(vector, shift), scale)
        place = builder.add(top, ir.Constant(top.type, t))
        pointer = _pointer(context, builder, kind, target, [(place, types.intp), (column, types.intp)])
        builder.store(normalised, builder.bitcast(pointer, normalised.type.as_pointer()), align=1)


def _transpose(builder, vectors):
    """Transpose 16 vectors of 16 (row k, lane t → row t, lane k): four stages of pairwise
    two-source shuffles at distances 8, 4, 2, 1 (generic IR; vpermt2ps on AVX-512)."""
    vectors, distance = list(vectors), WIDTH // 2
    masks = ir.VectorType(ir.IntType(32), WIDTH)
    while distance:
        lower = [x if (x // distance) % 2 == 0 else WIDTH + x - distance for x in range(WIDTH)]
        upper = [x + distance if (x // distance) % 2 == 0 else WIDTH + x for x in range(WIDTH)]
        for i in range(WIDTH):
            if (i // distance) % 2 == 0:
                a, b = vectors[i], vectors[i + distance]
                vectors[i] = builder.shuffle_vector(a, b, ir.Constant(masks, lower))
                vectors[i + distance] = builder.shuffle_vector(a, b, ir.Constant(masks, upper))
        distance //= 2
    return vectors


def _splat(builder, value):
    vector = ir.VectorType(value.type, WIDTH)
    single = builder.insert_element(ir.Constant(vector, None), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(single, single, ir.Constant(ir.VectorType(ir.IntType(32), WIDTH), [0] * WIDTH))


# ------------------------------------------------------------------ kernels


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
def _block_tables(low, high, weight, width, places, indices, weights):
    """The permute gather's tables for one axis. Per block of 16 outputs (the last block ends
    at the last output): ``places[:, block]`` = (window start in a row of ``width`` values, first
    output), ``indices[:, block * 16 + t]`` = low and high index relative to the window,
    ``weights`` likewise. False where a block spans more than one window (a
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
        start = min(lowest, width - WINDOW)
        if start < 0 or highest - start >= WINDOW:
            return False
        places[0, block], places[1, block] = start, first
        for t in range(WIDTH):
            indices[0, block * WIDTH + t] = low[first + t] - start
            indices[1, block * WIDTH + t] = high[first + t] - start
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
def _blend_tiles(between, first, cols0, cols1, col_weight, shift, scale, out):
    """Transposed sample on AVX-512: output column ``j`` = normalised blend of the rows
    ``cols0[j]`` and ``cols1[j]`` of ``between`` (offset by ``first``), written in 16 × 16 tiles
    transposed in registers (the one transposition a transposed sample needs)."""
    height, width = out.shape
    for row_tile in range((height + WIDTH - 1) // WIDTH):
        top = min(row_tile * WIDTH, height - WIDTH)
        for column_tile in range((width + WIDTH - 1) // WIDTH):
            column = min(column_tile * WIDTH, width - WIDTH)
            blend_rows_tile(between, cols0, cols1, col_weight, first, column, top, out, shift, scale)


@njit(parallel=True, cache=True, nogil=True, fastmath=True, boundscheck=False)
def resample(cache, index, channels, rows0, rows1, row_weight, cols0, cols1, col_weight, transpose,
             keep, shift, scale, out):  # pragma: no cover - compiled
    """``out[b, c]`` = normalised ``cache[index[b], channels[c]]`` (transposed where
    ``transpose[b]``) sampled at the row and column tables; zeros where not ``keep[b]``."""
    batch, count, height, width = out.shape
    for b in prange(batch):
        # Square: its rows are source rows or output columns, its columns output rows, output
        # columns or source columns, depending on the path (nothing is bounds-checked here).
        side = max(height, width, cache.shape[2], cache.shape[3])
        between = np.empty((side, side), np.float32)
        r0, r1 = rows0[b], rows1[b]
        first, last = min(r0.min(), r1.min()), max(r0.max(), r1.max())
        c0, c1 = cols0[b], cols1[b]
        # AVX-512: gather along source rows with the table of the output axis they run along
        # (columns for a plain sample, rows for a transposed one), then blend whole rows.
        along = (r0, r1, row_weight[b]) if transpose[b] else (c0, c1, col_weight[b])
        places = np.empty((2, (len(along[0]) + WIDTH - 1) // WIDTH), np.int64)
        indices = np.empty((2, places.shape[1] * WIDTH), np.int32)
        weights = np.empty(indices.shape[1], np.float32)
        permute = PERMUTE_GATHER and min(height, width) >= WIDTH and _block_tables(
            along[0], along[1], along[2], cache.shape[3], places, indices, weights)
        if PERMUTE_GATHER and permute and transpose[b]:
            first, last = min(c0.min(), c1.min()), max(c0.max(), c1.max())  # source rows: output columns
        for c in range(count):
            if not keep[b]:
                out[b, c] = 0.0
                continue
            plane = cache[index[b], channels[c]]
            if PERMUTE_GATHER and permute:
                _permute_along_rows(plane, first, last, places, indices, weights, between)
                if transpose[b]:
                    _blend_tiles(between, first, c0, c1, col_weight[b], shift[c], scale[c], out[b, c])
                else:
                    _blend_rows(between, first, r0, r1, row_weight[b], shift[c], scale[c], out[b, c])
            elif transpose[b]:
                _blend_source_rows(plane, first, last, c0, c1, col_weight[b], between)
                _gather_along_columns(between, first, r0, r1, row_weight[b], shift[c], scale[c], out[b, c])
            else:
                _gather_along_rows(plane, first, last, c0, c1, col_weight[b], between)
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
