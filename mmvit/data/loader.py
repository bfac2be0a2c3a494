"""Batches for one trial: memory-mapped cache → one gather per batch → the training device →
normalisation and the thesis's augmentations there, vectorised over the batch.

Why not a per-sample ``DataLoader``: a Python call per patch (index, convert, eight small
transforms, collate) caps a loader at a few thousand patches per second on a whole machine,
while one ``index_select`` of a batch from the memory map runs at memory speed, and a GPU does
the augmentation of a 1024-patch batch in well under a millisecond. So a batch is gathered in
one call (S2 as uint16 and S1 as stored, into pinned memory on GPUs), copied to the device
without blocking while the previous batch trains (a background thread stays one batch ahead),
and normalised, flipped, cropped and dropped there (:mod:`mmvit.data.batch_augment`). On a CPU
there is no copy at all: the kernels read each batch's rows in place from the memory map while
they normalise and augment, in line (the cores that would run a thread are the ones training).

Reproducible: a batch's order and augmentation draws come from one CPU generator seeded per
epoch, so arms that share a seed see the same batches, and a resumed epoch repeats them.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mmvit.config import TrialConfig
from mmvit.data.bands import input_channels
from mmvit.data.batch_augment import AugmentOptions, BatchDraws, draw_batch, normalise_batch, resample_batch
from mmvit.data.bigearthnet import BigEarthNetMM
from mmvit.data.cache import default_cache_dir
from mmvit.data.transforms import channel_affine

Batch = dict[str, torch.Tensor]
INPUT_KEYS = ("s2", "s1")  # model input keys; the dataset's image_s2 / image_s1
DRAW_AHEAD = 8  # batches whose augmentation draws are made together (their tables: ~10 MB a batch of 1024)


@dataclass
class SplitArrays:
    """A cached split as whole arrays: ``images[key]`` (all cached rows × C × 120 × 120,
    memory-mapped, never written), ``labels`` (rows × 19, uint8), the ``rows`` this split uses
    (readable patches, possibly a subset) and the S2 channels in use (RGB is a subset)."""

    images: dict[str, torch.Tensor]
    labels: torch.Tensor
    rows: torch.Tensor
    s2_channels: list[int] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def head(self, count: int) -> SplitArrays:
        """The first ``count`` patches (``data.max_train_patches``)."""
        return replace(self, rows=self.rows[:count])

    def gather(self, rows: torch.Tensor, out: Batch | None = None) -> Batch:
        """One indexing operation per array: images as stored, labels as uint8."""
        batch: Batch = {}
        for key, array in self.images.items():
            target = None if out is None else out[key][: len(rows)]
            batch[key] = torch.index_select(array, 0, rows, out=target) if target is not None \
                else torch.index_select(array, 0, rows)
        batch["label"] = torch.index_select(self.labels, 0, rows)
        return batch


def split_arrays(dataset: BigEarthNetMM) -> SplitArrays:
    """The arrays behind a cached :class:`BigEarthNetMM` (no copy)."""
    cache = dataset.cache_arrays()
    with warnings.catch_warnings():  # read-only memory maps: torch warns that it could write; we never do
        warnings.simplefilter("ignore", UserWarning)
        images = {key: torch.from_numpy(cache[key]) for key in INPUT_KEYS if key in cache}
        labels = torch.from_numpy(cache["label"])
    channels = dataset.s2_channels
    return SplitArrays(images, labels, torch.from_numpy(dataset.rows.astype(np.int64)),
                       channels if "s2" in images and len(channels) != images["s2"].shape[1] else None)


@dataclass
class TrialData:
    train: SplitArrays
    validation: SplitArrays
    test: SplitArrays
    in_chans: dict[str, int]
    archive: str
    class_counts: np.ndarray  # training-split patches per class (canonical order)
    normalisation: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    augment: AugmentOptions = field(default_factory=AugmentOptions)


def available_cpus() -> int:
    """CPUs this process may use (Ray and cgroups restrict the affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def build_datasets(config: TrialConfig, *, progress: bool = False) -> TrialData:
    """The three splits of ``config.data``, cached once, with the training split's statistics
    and the augmentations of ``config.augment``."""
    data, augment = config.data, config.augment
    cache_dir = Path(data.cache_dir).expanduser() if data.cache_dir else default_cache_dir()
    common = dict(modalities=data.modalities, resampling=data.resampling,
                  speckle_filter=data.speckle_filter, cache_dir=cache_dir, s1_dtype=data.s1_dtype,
                  progress=progress)
    root = data.root
    if root is None:
        from mmvit.data.demo import ensure_demo_archive

        root = ensure_demo_archive()
    train = BigEarthNetMM(root, "train", **common)
    stats = train.stats()
    normalisation = {}
    if "s2" in stats:
        normalisation["s2"] = channel_affine(stats["s2"], "standardise")
    if "s1" in stats:
        normalisation["s1"] = channel_affine(stats["s1"], data.s1_normalisation)
    splits = [split_arrays(train)] + [split_arrays(BigEarthNetMM(root, name, **common))
                                      for name in ("validation", "test")]
    if data.max_train_patches is not None and data.max_train_patches < len(splits[0]):
        splits[0] = splits[0].head(data.max_train_patches)
    labels = splits[0].labels[splits[0].rows].numpy()
    options = AugmentOptions(flip=augment.flip, crop=augment.crop, crop_scale=tuple(augment.crop_scale),
                             synchronised=augment.synchronised, modality_drop=augment.modality_drop)
    return TrialData(*splits, input_channels(data.modalities), train.archive.describe(),
                     labels.sum(axis=0).astype(np.int64), normalisation, options)


class BatchLoader:
    """The batches of one split on ``device``: normalised, and augmented when ``augment`` is
    given. Iterate ``batches(seed)``; a CPU batch's image tensors are reused by the next batch
    (train or evaluate on a batch before asking for the next)."""

    def __init__(self, split: SplitArrays, *, batch_size: int, device: torch.device,
                 normalisation: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 augment: AugmentOptions | None = None, shuffle: bool = False,
                 prefetch: bool | None = None) -> None:
        self.split, self.batch_size, self.device = split, batch_size, device
        self.augment, self.shuffle = augment, shuffle
        # A background thread pays off where the host would otherwise wait for the device. On a
        # CPU the same cores train the model, and a third busy thread beside torch's own took
        # 15-20 % off a small trial's samples/s on 2 cores (benchmarks/train.py); the gather it
        # would hide is a few per cent of a step there.
        self.prefetch = device.type == "cuda" if prefetch is None else prefetch
        self.keys = [key for key in INPUT_KEYS if key in split.images]
        self.normalisation = {}
        for key in self.keys:  # one (shift, scale) per channel: the CPU kernels index them by channel
            channels = (len(split.s2_channels) if key == "s2" and split.s2_channels is not None
                        else split.images[key].shape[1])
            shift, scale = normalisation.get(key, (torch.zeros(1), torch.ones(1)))
            self.normalisation[key] = (shift.expand(channels).contiguous().to(device),
                                       scale.expand(channels).contiguous().to(device))
        # On the training device: a GPU batch takes its channels there without a copy per batch.
        self._channels = ({"s2": torch.tensor(split.s2_channels, device=device)}
                          if split.s2_channels is not None else {})
        self._pin = device.type == "cuda"
        self._outputs: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def _order(self, generator: torch.Generator) -> list[torch.Tensor]:
        rows = self.split.rows
        if self.shuffle:
            rows = rows[torch.randperm(len(rows), generator=generator)]
        # Sorted within a batch: the gather walks the memory map forwards.
        return [chunk.sort().values for chunk in rows.split(self.batch_size)]

    def _host_buffers(self) -> Batch:
        return {key: torch.empty((self.batch_size, *array.shape[1:]), dtype=array.dtype,
                                 pin_memory=self._pin)
                for key, array in self.split.images.items()}

    def _produce(self, order: list[torch.Tensor], out: queue.Queue, stop: threading.Event,
                 threads: int) -> None:
        """Gather batch after batch into a ring of host buffers (three: one in use, one
        waiting, one being filled) and, on GPUs, copy it to the device on a side stream.
        Ends with ``None`` (or the error raised); gives up as soon as ``stop`` is set (the
        consumer left the epoch early)."""

        def hand(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            # torch's thread count is per OS thread: a new thread would use every core of the
            # machine, and on a shared machine (Ray trials side by side) spin against the others.
            torch.set_num_threads(threads)
            ring = [self._host_buffers() for _ in range(3)]
            stream = torch.cuda.Stream(self.device) if self._pin else None
            for index, rows in enumerate(order):
                batch = self.split.gather(rows, ring[index % len(ring)])
                if stream is not None:
                    with torch.cuda.stream(stream):
                        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                    stream.synchronize()  # the host buffer is free again; the device copy is done
                if not hand(batch):
                    return
            hand(None)
        except BaseException as error:  # handed to the consumer, which raises it
            hand(error)

    def _host_batches(self, order: list[torch.Tensor]) -> Iterator[Batch]:
        if not self.prefetch:
            for rows in order:
                if self.device.type == "cpu":
                    # The CPU kernels read the images in place from the memory map: only the
                    # labels are gathered, and ``rows`` says where the images are.
                    yield {"label": torch.index_select(self.split.labels, 0, rows), "rows": rows}
                    continue
                batch = self.split.gather(rows)
                yield {k: v.to(self.device, non_blocking=self._pin) for k, v in batch.items()}
            return
        handoff: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(order, handoff, stop, torch.get_num_threads()),
                                  daemon=True,
                                  name="mmvit-batches")
        worker.start()
        try:
            while True:
                item = handoff.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                if self._pin:
                    for tensor in item.values():
                        tensor.record_stream(torch.cuda.current_stream(self.device))
                yield item
        finally:
            stop.set()
            worker.join()

    def _output(self, key: str, count: int, channels: int) -> torch.Tensor | None:
        """A reused CPU output buffer (large fresh allocations page-fault on every batch)."""
        if self.device.type != "cpu":
            return None
        buffer = self._outputs.get(key)
        size = self.split.images[key].shape[-1]
        if buffer is None or buffer.shape[1] != channels:
            buffer = self._outputs[key] = torch.empty((self.batch_size, channels, size, size))
        return buffer[:count]

    def _draw_ahead(self, chunks: list[torch.Tensor], generator: torch.Generator) -> list[BatchDraws]:
        """The draws of the next few batches, in batch order from the epoch's generator (the same
        numbers as one batch at a time). Drawn together because a batch's augmentation streams
        tens of MB through the caches, and the small torch operations of the draws that follow
        it then ran 2-4x slower than in a row."""
        return [draw_batch(len(rows), self.keys, self.augment, generator) for rows in chunks]

    def batches(self, seed: int = 0) -> Iterator[Batch]:
        """Every batch of the split once: model inputs ``s2``/``s1`` (float32) and ``label``."""
        generator = torch.Generator().manual_seed(seed)
        order = self._order(generator)
        ahead: list[BatchDraws] = []
        for position, host in enumerate(self._host_batches(order)):
            count = len(host["label"])
            draws = None
            if self.augment is not None:
                if not ahead:
                    ahead = self._draw_ahead(order[position:position + DRAW_AHEAD], generator)
                draws = ahead.pop(0)
            batch: Batch = {"label": host["label"].float()}
            for key in self.keys:
                # Either the whole memory-mapped array and the batch's rows in it (CPU), or the
                # gathered batch on the device.
                source, index = ((self.split.images[key], host["rows"]) if "rows" in host
                                 else (host[key], None))
                channels = self._channels.get(key)
                shift, scale = self.normalisation[key]
                out = self._output(key, count, len(shift))
                if draws is None:
                    batch[key] = normalise_batch(source, shift, scale, out, index=index, channels=channels)
                else:
                    batch[key] = resample_batch(source, draws.tables[key].to(self.device),
                                                draws.keep[key].to(self.device), shift, scale, out,
                                                index=index, channels=channels)
            yield batch
