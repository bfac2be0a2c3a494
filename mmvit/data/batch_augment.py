"""The thesis's augmentations (§6.2) on whole batches, on the training device.

Same meaning as the per-sample transforms of :mod:`mmvit.data.transforms` (one of the 8
dihedral transforms, then a random resized crop back to 120 px with bilinear interpolation and
no antialiasing, then modality drop; synchronised or one draw per image), but computed for a
batch at once:

* **Draws** come from one CPU ``torch.Generator`` per epoch, a few numbers per sample, so they
  are the same on every device and a resumed epoch repeats them.
* **Resampling.** A dihedral transform followed by a crop-and-resize maps each output pixel
  (i, j) to a bilinear sample of the source at (row table[i], column table[j]) of the source
  or of its transpose; flips only reflect the tables. Each table holds, per output index, two
  source indices and a weight, computed exactly as ``torch.nn.functional.interpolate``
  (bilinear, ``align_corners=False``) computes them inside the crop. So normalisation,
  dihedral, crop and resize are one pass over the output: a numba kernel on CPUs
  (:mod:`mmvit.data._resample_cpu`), two batched gathers on GPUs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmvit.data.bands import PATCH_SIZE
from mmvit.data.transforms import _DIHEDRAL

CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params tries 10 boxes, then the centre


@dataclass(frozen=True)
class AugmentOptions:
    """What to draw for a training batch (thesis §6.2; all on in the fusion experiments)."""

    flip: bool = True
    crop: bool = True
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    synchronised: bool = True
    modality_drop: float = 0.0


@dataclass
class Tables:
    """Per sample: source index pairs and weights for output rows and columns, and whether
    the source is read transposed. ``rows0/rows1`` (B, 120) int64, ``row_weight`` float32."""

    rows0: torch.Tensor
    rows1: torch.Tensor
    row_weight: torch.Tensor
    cols0: torch.Tensor
    cols1: torch.Tensor
    col_weight: torch.Tensor
    transpose: torch.Tensor  # bool (B,)

    def to(self, device: torch.device) -> Tables:
        return Tables(*(getattr(self, f).to(device, non_blocking=True) for f in self.__dataclass_fields__))


def draw_boxes(count: int, generator: torch.Generator, scale: Sequence[float],
               ratio: Sequence[float], size: int = PATCH_SIZE) -> torch.Tensor:
    """``count`` crop boxes (top, left, height, width) with torchvision's RandomResizedCrop
    distribution: up to 10 tries of area × aspect drawn log-uniformly, the first that fits;
    where none fits, torchvision's fallback (the whole square, or a centred box at the nearest
    aspect when 1 is outside ``ratio``)."""
    area = size * size
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(count, CROP_ATTEMPTS, generator=generator))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(count, CROP_ATTEMPTS, generator=generator))
    width = torch.round(torch.sqrt(target * aspect)).long()
    height = torch.round(torch.sqrt(target / aspect)).long()
    fits = (width > 0) & (width <= size) & (height > 0) & (height <= size)
    first = torch.where(fits.any(1), fits.long().argmax(1), -1)
    pick = first.clamp(min=0)[:, None]
    fallback_height, fallback_width = size, size  # a square's aspect is 1
    if 1 < min(ratio):
        fallback_height = int(round(size / min(ratio)))
    elif 1 > max(ratio):
        fallback_width = int(round(size * max(ratio)))
    drawn = first >= 0
    height = torch.where(drawn, height.gather(1, pick)[:, 0], fallback_height)
    width = torch.where(drawn, width.gather(1, pick)[:, 0], fallback_width)
    top = (torch.rand(count, generator=generator) * (size - height + 1)).long()
    left = (torch.rand(count, generator=generator) * (size - width + 1)).long()
    top = torch.where(drawn, top, (size - fallback_height) // 2)
    left = torch.where(drawn, left, (size - fallback_width) // 2)
    return torch.stack([top, left, height, width], 1)


def _axis_table(start: torch.Tensor, length: torch.Tensor, flip: torch.Tensor,
                size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source index pairs and weights along one axis for a crop [start, start + length) resized
    to ``size``, as bilinear ``interpolate(align_corners=False)`` samples it (coordinates
    clamped to the crop), then reflected where ``flip``."""
    scale = length.float()[:, None] / size
    out = torch.arange(size, dtype=torch.float32)[None, :]
    source = (scale * (out + 0.5) - 0.5).clamp(min=0)
    low = source.long()  # truncation is floor here: the coordinate is clamped at 0
    weight = source - low
    high = low + (low < length[:, None] - 1).long()
    low, high = low + start[:, None], high + start[:, None]
    flip = flip[:, None]
    last = size - 1
    return torch.where(flip, last - low, low), torch.where(flip, last - high, high), weight


def make_tables(dihedral: torch.Tensor, boxes: torch.Tensor, size: int = PATCH_SIZE) -> Tables:
    """Tables for dihedral element ``dihedral[b]`` (as in :mod:`mmvit.data.transforms`) then
    crop ``boxes[b]`` = (top, left, height, width) resized to ``size``."""
    transpose = torch.tensor([t for t, _ in _DIHEDRAL])[dihedral]
    flip_rows = torch.tensor([-2 in dims for _, dims in _DIHEDRAL])[dihedral]
    flip_cols = torch.tensor([-1 in dims for _, dims in _DIHEDRAL])[dihedral]
    top, left, height, width = boxes.unbind(1)
    rows = _axis_table(top, height, flip_rows, size)
    cols = _axis_table(left, width, flip_cols, size)
    return Tables(*rows, *cols, transpose)


def identity_tables(count: int, size: int = PATCH_SIZE) -> Tables:
    return make_tables(torch.zeros(count, dtype=torch.long),
                       torch.tensor([[0, 0, size, size]]).expand(count, 4))


@dataclass
class BatchDraws:
    """One training batch's random choices: tables per image key, and which samples keep
    each image (modality drop)."""

    tables: dict[str, Tables]
    keep: dict[str, torch.Tensor]


def draw_batch(count: int, keys: Sequence[str], options: AugmentOptions,
               generator: torch.Generator) -> BatchDraws:
    """The draws of one batch, in a fixed order (dihedral, crop, drop) from ``generator``."""
    tables: dict[str, Tables] = {}
    shared: tuple[torch.Tensor, torch.Tensor] | None = None
    for key in keys:
        if shared is None or not options.synchronised:
            dihedral = (torch.randint(8, (count,), generator=generator) if options.flip
                        else torch.zeros(count, dtype=torch.long))
            boxes = (draw_boxes(count, generator, options.crop_scale, options.crop_ratio) if options.crop
                     else torch.tensor([[0, 0, PATCH_SIZE, PATCH_SIZE]]).expand(count, 4))
            shared = (dihedral, boxes)
        tables[key] = make_tables(*shared)
    keep = {key: torch.ones(count, dtype=torch.bool) for key in keys}
    if len(keys) == 2 and options.modality_drop > 0:
        drop = torch.rand(count, generator=generator) < options.modality_drop
        which = torch.randint(2, (count,), generator=generator)
        for position, key in enumerate(keys):
            keep[key] = ~(drop & (which == position))
    return BatchDraws(tables, keep)


def as_float(source: torch.Tensor) -> torch.Tensor:
    """float32 values of ``source``; uint16 (the S2 cache) through int32, since not every
    device has kernels for torch's younger unsigned types."""
    if source.dtype == torch.uint16 and source.device.type != "cpu":
        return (source.view(torch.int16).to(torch.int32) & 0xFFFF).float()
    return source.float()


def resample_torch(source: torch.Tensor, tables: Tables, keep: torch.Tensor, shift: torch.Tensor,
                   scale: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Normalise ``(x - shift) * scale`` per channel, resample with ``tables``, zero the
    samples not kept: two batched gathers (the GPU path; exact on any device)."""
    batch = source.shape[0]
    size = tables.rows0.shape[1]
    x = (as_float(source) - shift.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
    x = torch.where(tables.transpose.view(-1, 1, 1, 1), x.transpose(-1, -2), x)

    def along(image: torch.Tensor, dim: int, low: torch.Tensor, high: torch.Tensor, weight: torch.Tensor):
        shape = [batch, 1, 1, 1]
        shape[dim] = size
        expand = list(image.shape)
        expand[dim] = size
        a = image.gather(dim, low.view(shape).expand(expand))
        b = image.gather(dim, high.view(shape).expand(expand))
        return torch.lerp(a, b, weight.view(shape).expand(expand))

    x = along(x, 2, tables.rows0, tables.rows1, tables.row_weight)
    x = along(x, 3, tables.cols0, tables.cols1, tables.col_weight)
    x = torch.where(keep.view(-1, 1, 1, 1), x, 0.0)
    if out is not None:
        out.copy_(x)
        return out
    return x


CHUNK_SAMPLES = 4
"""Samples per chunk of a CPU kernel's parallel loop. Chunks are handed to the threads as they
come free: in a trial the kernel starts right after a train step, while one of torch's OpenMP
threads still spins, and with one equal half per thread the kernel waited for the delayed half
(1.8× longer in a trial than alone; any size from 1 to 8 measured the same)."""


def configure_cpu_kernels() -> None:
    """The CPU kernels use as many threads as torch does in this thread (a trial's share),
    handing out :data:`CHUNK_SAMPLES` samples at a time."""
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    numba.set_parallel_chunksize(CHUNK_SAMPLES)


def _select(source: torch.Tensor, index: torch.Tensor | None, channels: torch.Tensor | None) -> torch.Tensor:
    """``source[index][:, channels]`` (``None``: all), as one gather per axis."""
    if index is not None:
        source = source.index_select(0, index.to(source.device))
    if channels is not None:
        source = source.index_select(1, channels.to(source.device))
    return source


def _kernel_inputs(source: torch.Tensor, index: torch.Tensor | None, channels: torch.Tensor | None):
    """What the CPU kernels read: the whole array (a memory-mapped cache is read in place), the
    rows and channels to take, as numpy. numba has no half floats: a float16 source (the S1
    cache's option) is gathered and converted first."""
    if source.dtype == torch.float16:
        source, index = _select(source, index, None).float(), None
    rows = torch.arange(len(source)) if index is None else index
    channels = torch.arange(source.shape[1]) if channels is None else channels
    return source.numpy(), rows.numpy(), channels.numpy()


def resample_batch(source: torch.Tensor, tables: Tables, keep: torch.Tensor, shift: torch.Tensor,
                   scale: torch.Tensor, out: torch.Tensor | None = None, *,
                   index: torch.Tensor | None = None, channels: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`resample_torch` of ``source[index][:, channels]`` (``None``: all), from the numba
    kernel when ``source`` is on a CPU, which reads the selected rows in place (a memory-mapped
    cache is never copied)."""
    if source.device.type != "cpu":
        return resample_torch(_select(source, index, channels), tables, keep, shift, scale, out)
    from mmvit.data._resample_cpu import resample

    configure_cpu_kernels()
    array, rows, picked = _kernel_inputs(source, index, channels)
    size = tables.rows0.shape[1]
    out = torch.empty((len(rows), len(picked), size, size)) if out is None else out
    resample(array, rows, picked, *(t.numpy() for t in (tables.rows0, tables.rows1, tables.row_weight,
                                                         tables.cols0, tables.cols1, tables.col_weight,
                                                         tables.transpose)),
             keep.numpy(), shift.float().numpy(), scale.float().numpy(), out.numpy())
    return out


def normalise_batch(source: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                    out: torch.Tensor | None = None, *, index: torch.Tensor | None = None,
                    channels: torch.Tensor | None = None) -> torch.Tensor:
    """``(source[index][:, channels] - shift) * scale`` per channel: one numba pass that reads
    the selected rows in place on CPUs, torch elsewhere."""
    if source.device.type != "cpu":
        view = (1, -1, 1, 1)
        result = (as_float(_select(source, index, channels)) - shift.view(view)).mul_(scale.view(view))
        return result if out is None else out.copy_(result)
    from mmvit.data._resample_cpu import normalise

    configure_cpu_kernels()
    array, rows, picked = _kernel_inputs(source, index, channels)
    size = source.shape[-1]
    out = torch.empty((len(rows), len(picked), size, size)) if out is None else out
    normalise(array, rows, picked, shift.float().numpy(), scale.float().numpy(), out.numpy())
    return out
