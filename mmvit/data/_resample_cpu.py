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

**Non-temporal stores.** A batch of outputs (690 KB a patch) is far larger than the caches, so
a normal store first reads each line it is about to overwrite. On AVX-512 hosts, where the
output rows are 32-byte aligned (the loader's torch buffers are), both kernels write them with
``vmovntps`` instead, past the caches, and fence once per sample: the blend pass of a plain
sample was as slow as reading and writing the whole patch (the memory floor), and streamed it
costs about two thirds of that. A transposed sample first completes each band of 16 output rows
in a small buffer (its tiles would otherwise write scattered partial lines, which defeat the
stores), then streams the band.

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
STREAM = 8  # float32 values one non-temporal store writes (32 bytes: the alignment it needs)


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

    window = _load_floats(context, builder, element, window_at, WINDOW)
    first = builder.shuffle_vector(window, window, ir.Constant(ints, list(range(WIDTH))))
    second = builder.shuffle_vector(window, window, ir.Constant(ints, list(range(WIDTH, WINDOW))))
    low, high, weight = (load(builder.gep(table.data, [table_at]), kind)
                         for table, kind in zip(tables, (ints, ints, floats)))
    permute = builder.module.globals.get(_VPERMI2PS) or ir.Function(
        builder.module, ir.FunctionType(floats, [floats, ints, floats]), _VPERMI2PS)
    a = builder.call(permute, [first, low, second])
    b = builder.call(permute, [first, high, second])
    return builder.fadd(a, builder.fmul(weight, builder.fsub(b, a)))


def _load_floats(context, builder, element, pointer, count: int):
    """``count`` values of numba type ``element`` from ``pointer`` as a float32 vector (uint16
    S2 in one load, widened on the way)."""
    vector = builder.load(builder.bitcast(pointer, ir.VectorType(context.get_value_type(element), count).as_pointer()),
                          align=1)
    floats = ir.VectorType(ir.FloatType(), count)
    if isinstance(element, types.Integer):
        return (builder.sitofp if element.signed else builder.uitofp)(vector, floats)
    if element != types.float32:  # float64 (float16 caches are converted before the kernels)
        return builder.fptrunc(vector, floats)
    return vector


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


def _stream_store(builder, vector, pointer) -> None:
    """A non-temporal store (``vmovntps``) of 8 float32 at a 32-byte aligned ``pointer``: it
    writes past the caches instead of first reading each line it writes."""
    store = builder.store(vector, builder.bitcast(pointer, vector.type.as_pointer()), align=4 * STREAM)
    store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))


@intrinsic
def lerp_rows8_stream(typingctx, low, high, weight, shift, scale, out, at):
    """``out[at + t]`` = normalised ``(v - shift) * scale`` of the blend of ``low[at + t]`` and
    ``high[at + t]`` by ``weight``, for t < 8, written with a non-temporal store.

    ``low``, ``high`` and ``out`` are contiguous float32 rows; ``out[at]`` must be 32-byte
    aligned. Nothing is checked."""
    signature = types.void(low, high, weight, shift, scale, out, at)

    def codegen(context, builder, sig, args):
        arrays = _arrays(context, builder, [sig.args[i] for i in (0, 1, 5)], [args[i] for i in (0, 1, 5)])
        low_at, high_at, out_at = (_pointer(context, builder, sig.args[i], array, [(args[6], sig.args[6])])
                                   for i, array in zip((0, 1, 5), arrays))
        a, b = (_load_floats(context, builder, sig.args[i].dtype, at, STREAM) for i, at in ((0, low_at), (1, high_at)))
        weight, shift, scale = (_splat(builder, context.cast(builder, args[i], sig.args[i], types.float32), STREAM)
                                for i in (2, 3, 4))
        blended = builder.fadd(a, builder.fmul(weight, builder.fsub(b, a)))
        _stream_store(builder, builder.fmul(builder.fsub(blended, shift), scale), out_at)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def normalise8_stream(typingctx, row, shift, scale, out, at):
    """``out[at + t] = (row[at + t] - shift) * scale`` in float32 for t < 8, written with a
    non-temporal store (``row`` contiguous, any numeric type; ``out[at]`` 32-byte aligned;
    nothing is checked)."""
    signature = types.void(row, shift, scale, out, at)

    def codegen(context, builder, sig, args):
        source, target = _arrays(context, builder, [sig.args[0], sig.args[3]], [args[0], args[3]])
        source_at, target_at = (_pointer(context, builder, sig.args[i], array, [(args[4], sig.args[4])])
                                for i, array in ((0, source), (3, target)))
        values = _load_floats(context, builder, sig.args[0].dtype, source_at, STREAM)
        shift, scale = (_splat(builder, context.cast(builder, args[i], sig.args[i], types.float32), STREAM)
                        for i in (1, 2))
        _stream_store(builder, builder.fmul(builder.fsub(values, shift), scale), target_at)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def store_fence(typingctx):
    """``sfence``: the non-temporal stores before it are visible to every thread after it
    (they are weakly ordered; the end of a parallel loop does not order them on every CPU)."""

    def codegen(context, builder, sig, args):
        name = "llvm.x86.sse.sfence"
        fence = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                                  name)
        builder.call(fence, [])
        return context.get_dummy_value()

    return types.void(), codegen


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


def _splat(builder, value, width: int = WIDTH):
    vector = ir.VectorType(value.type, width)
    single = builder.insert_element(ir.Constant(vector, None), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(single, single, ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width))


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


@njit(inline="always", boundscheck=False)
def _blend_rows_stream(between, first, rows0, rows1, row_weight, shift, scale, out):
    """:func:`_blend_rows` written with non-temporal stores (``out`` rows 32-byte aligned, a
    multiple of 8 long)."""
    for i in range(out.shape[0]):
        low, high, target = between[rows0[i] - first], between[rows1[i] - first], out[i]
        for x in range(0, target.shape[0], STREAM):
            lerp_rows8_stream(low, high, row_weight[i], shift, scale, target, x)


@njit(inline="always", boundscheck=False)
def _blend_tiles_stream(between, first, cols0, cols1, col_weight, shift, scale, strip, out):
    """:func:`_blend_tiles` through ``strip`` (16 rows of ``out``'s width, in L1): each band of
    16 output rows is completed there, then written with non-temporal stores, whole rows at a
    time (scattered partial lines would defeat them)."""
    height, width = out.shape
    for row_tile in range((height + WIDTH - 1) // WIDTH):
        top = min(row_tile * WIDTH, height - WIDTH)
        for column_tile in range((width + WIDTH - 1) // WIDTH):
            column = min(column_tile * WIDTH, width - WIDTH)
            blend_rows_tile(between[:, top:], cols0, cols1, col_weight, first, column, 0, strip, shift, scale)
        for t in range(WIDTH):  # a copy: the strip holds normalised values already
            source, target = strip[t], out[top + t]
            for x in range(0, width, STREAM):
                normalise8_stream(source, np.float32(0.0), np.float32(1.0), target, x)


@njit(inline="always")
def _streamable(out):
    """Whether every output row takes 32-byte non-temporal stores: C-contiguous float32 planes,
    rows a multiple of 8 values long, the first one 32-byte aligned (torch's buffers are)."""
    batch, count, height, width = out.shape
    return (width % STREAM == 0 and out.ctypes.data % (4 * STREAM) == 0 and out.strides[3] == 4
            and out.strides[2] == 4 * width and out.strides[1] == 4 * width * height
            and out.strides[0] == 4 * width * height * count)


@njit(parallel=True, cache=True, nogil=True, fastmath=True, boundscheck=False)
def resample(cache, index, channels, rows0, rows1, row_weight, cols0, cols1, col_weight, transpose,
             keep, shift, scale, out):  # pragma: no cover - compiled
    """``out[b, c]`` = normalised ``cache[index[b], channels[c]]`` (transposed where
    ``transpose[b]``) sampled at the row and column tables; zeros where not ``keep[b]``."""
    batch, count, height, width = out.shape
    stream = PERMUTE_GATHER and _streamable(out)  # non-temporal stores (module docstring)
    for b in prange(batch):
        # Square: its rows are source rows or output columns, its columns output rows, output
        # columns or source columns, depending on the path (nothing is bounds-checked here).
        side = max(height, width, cache.shape[2], cache.shape[3])
        between = np.empty((side, side), np.float32)
        strip = np.empty((WIDTH, width), np.float32)
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
                if transpose[b] and stream:
                    _blend_tiles_stream(between, first, c0, c1, col_weight[b], shift[c], scale[c], strip, out[b, c])
                elif transpose[b]:
                    _blend_tiles(between, first, c0, c1, col_weight[b], shift[c], scale[c], out[b, c])
                elif stream:
                    _blend_rows_stream(between, first, r0, r1, row_weight[b], shift[c], scale[c], out[b, c])
                else:
                    _blend_rows(between, first, r0, r1, row_weight[b], shift[c], scale[c], out[b, c])
            elif transpose[b]:
                _blend_source_rows(plane, first, last, c0, c1, col_weight[b], between)
                _gather_along_columns(between, first, r0, r1, row_weight[b], shift[c], scale[c], out[b, c])
            else:
                _gather_along_rows(plane, first, last, c0, c1, col_weight[b], between)
                _blend_rows(between, first, r0, r1, row_weight[b], shift[c], scale[c], out[b, c])
        if PERMUTE_GATHER and stream:
            store_fence()


@njit(parallel=True, cache=True, nogil=True, fastmath=True, boundscheck=False)
def normalise(cache, index, channels, shift, scale, out):  # pragma: no cover - compiled
    """``out[b, c] = (cache[index[b], channels[c]] - shift[c]) * scale[c]`` in one pass
    (evaluation batches)."""
    batch, count, height, width = out.shape
    stream = PERMUTE_GATHER and _streamable(out)  # as in resample
    for b in prange(batch):
        for c in range(count):
            m, s = shift[c], scale[c]
            plane, target = cache[index[b], channels[c]], out[b, c]
            if PERMUTE_GATHER and stream and plane.strides[1] == plane.itemsize:
                for i in range(height):
                    row = plane[i]
                    for j in range(0, width, STREAM):
                        normalise8_stream(row, m, s, target[i], j)
                continue
            for i in range(height):
                for j in range(width):
                    target[i, j] = (np.float32(plane[i, j]) - m) * s
        if PERMUTE_GATHER and stream:
            store_fence()
