"""Sixteen bilinear samples along one row in a handful of vector instructions (AVX-512).

Sampling a row at a table of source indices is a gather, and neither numba nor LLVM vectorises
it (hardware gathers are slow on the CPUs we measured, and there are none for 16-bit values): as
scalar code it cost ~1.2–2 ns an output value, ~90 % of the augmented batch kernel. But an
upsampling crop moves at most one source pixel per output pixel, so the 32 indices that 16
outputs need (low and high neighbour) lie in a window of 17 source values. The window is loaded
as two vectors (uint16 sources converted on the way) and AVX-512's two-table permute
(``vpermi2ps``) picks each output's neighbours from it, then one blend: 5–10× faster than the
scalar loop, with the same float32 arithmetic (the tests compare the two).

The one x86 intrinsic lives here, behind :data:`PERMUTE_GATHER`: true only where numba compiles
for AVX-512 (the host's features, or ``NUMBA_CPU_FEATURES`` / ``NUMBA_ENABLE_AVX`` where set —
numba's on-disk cache is keyed by the same features). Callers keep their scalar loop for other
CPUs and branch on this constant, which numba prunes before compiling.
"""

from __future__ import annotations

import llvmlite.binding
import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

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
    """IR of 16 blended samples: the 32 values of type ``element`` from pointer ``window_at``,
    two permutes with the (low, high, weight) ``tables`` arrays at ``table_at``, a blend."""
    f32, i32 = ir.FloatType(), ir.IntType(32)
    floats, ints = ir.VectorType(f32, WIDTH), ir.VectorType(i32, WIDTH)

    def load(pointer, vector):
        return builder.load(builder.bitcast(pointer, vector.as_pointer()), align=1)

    if isinstance(element, ir.IntType):  # uint16 S2: one load, widened to float32
        window = builder.uitofp(load(window_at, ir.VectorType(element, WINDOW)), ir.VectorType(f32, WINDOW))
        first = builder.shuffle_vector(window, window, ir.Constant(ints, list(range(WIDTH))))
        second = builder.shuffle_vector(window, window, ir.Constant(ints, list(range(WIDTH, WINDOW))))
    else:
        first = load(window_at, floats)
        second = load(builder.gep(window_at, [ir.Constant(ir.IntType(64), WIDTH)]), floats)
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
        blended = _blend(context, builder, context.get_value_type(sig.args[0].dtype), window_at, tables, args[5])
        pointer = _pointer(context, builder, sig.args[6], target, [(args[7], sig.args[7])])
        builder.store(blended, builder.bitcast(pointer, blended.type.as_pointer()), align=1)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def lerp16_tile(typingctx, rows, first_row, start, low, high, weight, table_at, plane, top, shift, scale):
    """The transposing pass, one 16 × 16 tile: for k, t < 16, ``plane[top + t, first_row + k]``
    = normalised ``(v - shift) * scale`` of :func:`lerp16` sample t of ``rows[first_row + k]``.

    The 16 blended vectors are transposed in registers (64 two-vector shuffles) and stored as
    16 row segments: storing each value down its column cost ~4× more."""
    signature = types.void(rows, first_row, start, low, high, weight, table_at, plane, top, shift, scale)

    def codegen(context, builder, sig, args):
        source, *tables, target = _arrays(context, builder, [sig.args[i] for i in (0, 3, 4, 5, 7)],
                                          [args[i] for i in (0, 3, 4, 5, 7)])
        element = context.get_value_type(sig.args[0].dtype)
        row_at = context.cast(builder, args[1], sig.args[1], types.intp)
        vectors = []
        for k in range(WIDTH):
            row = builder.add(row_at, ir.Constant(row_at.type, k))
            window_at = _pointer(context, builder, sig.args[0], source, [(row, types.intp), (args[2], sig.args[2])])
            vectors.append(_blend(context, builder, element, window_at, tables, args[6]))
        shift_value, scale_value = (_splat(builder, context.cast(builder, args[i], sig.args[i], types.float32))
                                    for i in (9, 10))
        top_at = context.cast(builder, args[8], sig.args[8], types.intp)
        for t, vector in enumerate(_transpose(builder, vectors)):
            normalised = builder.fmul(builder.fsub(vector, shift_value), scale_value)
            place = builder.add(top_at, ir.Constant(top_at.type, t))
            pointer = _pointer(context, builder, sig.args[7], target, [(place, types.intp), (row_at, types.intp)])
            builder.store(normalised, builder.bitcast(pointer, normalised.type.as_pointer()), align=1)
        return context.get_dummy_value()

    return signature, codegen


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
