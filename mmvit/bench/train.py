"""A trial's training throughput next to timm's own train step of the same network.

Both run in one process, on one synthetic cache, in turns (``rounds`` times, each side's
fastest round kept, so drifts of the machine hit both alike):

With ``compile``, both sides run ``torch.compile``d (the first round pays for compiling).

* **timm step**: timm's ``VisionTransformer`` on the 12 stacked channels (what Early Fusion is),
  forward + backward + Adam on one random batch that stays on the device: no data at all;
* **trial loop**: ``mmvit.train.loop.train_trial`` of Early Fusion with the same settings on a
  synthetic memory-mapped cache (uint16 S2, float32 S1, as the real cache stores them), every
  thesis augmentation on (desynchronised flips and crops, modality drop 0.5), its training
  samples/s of the last epoch (the first pays for warm-up and kernel compilation), and the share
  of that epoch it waited for batches: the data path's cost, which unlike the ratio does not
  move with the machine's drifts between the two sides' turns.

On CUDA it also reports the peak GPU memory and projects one epoch of the 269,695-patch
training split from the trial loop's rate.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmvit.config import TrialConfig, trial_config
from mmvit.data.bands import PATCH_SIZE
from mmvit.data.batch_augment import AugmentOptions
from mmvit.data.labels import NUM_CLASSES
from mmvit.data.loader import SplitArrays, TrialData

TRAIN_SPLIT = 269_695
"""Official BigEarthNet v1 training patches (snow, cloud and shadow excluded)."""

CONFIGS = {
    "small": dict(patch_size=20, depth=4, embed_dim=64, num_heads=4),
    "thesis": dict(patch_size=20, depth=8, embed_dim=256, num_heads=8),
}
"""``small``: the trial the data-path issue measured; ``thesis``: Table 7.1's ViT."""


def synthetic_split(folder: Path, patches: int, seed: int = 0) -> SplitArrays:
    """A memory-mapped cache of random patches with the real cache's dtypes and shapes."""
    rng = np.random.default_rng(seed)
    shapes = {"s2": ((patches, 10, PATCH_SIZE, PATCH_SIZE), np.uint16),
              "s1": ((patches, 2, PATCH_SIZE, PATCH_SIZE), np.float32)}
    images = {}
    for key, (shape, dtype) in shapes.items():
        array = np.lib.format.open_memmap(folder / f"{key}.npy", mode="w+", dtype=dtype, shape=shape)
        for start in range(0, patches, 512):  # in chunks: a 20,000-patch cache is 8 GB
            chunk = array[start:start + 512]
            chunk[:] = (rng.integers(0, 10_000, chunk.shape) if key == "s2"
                        else rng.normal(-15, 5, chunk.shape)).astype(dtype)
        array.flush()
        images[key] = torch.from_numpy(np.load(folder / f"{key}.npy", mmap_mode="c"))
    labels = torch.from_numpy((rng.random((patches, NUM_CLASSES)) < 0.15).astype(np.uint8))
    return SplitArrays(images, labels, torch.arange(patches))


def synthetic_data(folder: Path, patches: int, evaluation_patches: int) -> TrialData:
    train = synthetic_split(folder, patches)
    evaluation = train.head(evaluation_patches)
    counts = train.labels.numpy().sum(axis=0).astype(np.int64)
    normalisation = {"s2": (torch.full((10,), 5000.0), torch.full((10,), 1 / 2887.0)),
                     "s1": (torch.full((2,), -15.0), torch.full((2,), 0.2))}
    options = AugmentOptions(flip=True, crop=True, synchronised=False, modality_drop=0.5)
    return TrialData(train, evaluation, evaluation, {"s2": 10, "s1": 2}, "synthetic cache", counts,
                     normalisation, options)


@dataclass
class TrainBenchmark:
    config: str
    device: str
    compiled: bool
    batch_size: int
    patches: int
    timm_step: float  # samples/s
    trial_loop: float  # samples/s
    data_share: float  # of the trial loop's training time, waiting for batches
    peak_memory_mb: float

    @property
    def ratio(self) -> float:
        return self.trial_loop / self.timm_step

    @property
    def projected_epoch_s(self) -> float:
        return TRAIN_SPLIT / self.trial_loop

    def summary(self) -> str:
        memory = f", peak GPU memory {self.peak_memory_mb:,.0f} MiB" if self.device.startswith("cuda") else ""
        return "\n".join([
            f"{self.config} config on {self.device}{', torch.compile' if self.compiled else ''}, "
            f"batch {self.batch_size}, synthetic cache of "
            f"{self.patches:,} patches{memory}",
            f"  timm train step (data already on the device)   {self.timm_step:10.1f} samples/s",
            f"  trial loop (cache → augment → train step)      {self.trial_loop:10.1f} samples/s",
            f"  ratio trial loop / timm step                   {self.ratio:10.2f}",
            f"  trial loop waiting for batches                 {self.data_share:10.1%} of its training time",
            f"  projected epoch of the {TRAIN_SPLIT:,}-patch training split: {self.projected_epoch_s:,.1f} s",
        ])


def trial_settings(config: str, batch_size: int, device: str, epochs: int, compile: bool = False) -> TrialConfig:
    return trial_config({
        "model": {"fusion": "early", **CONFIGS[config]},
        "train": {"epochs": epochs, "batch_size": batch_size, "eval_batch_size": batch_size,
                  "device": device, "warmup_epochs": 0, "compile": compile},
    })


def _timm_rate(settings: TrialConfig, steps: int, warmup: int) -> float:
    from timm.models.vision_transformer import VisionTransformer

    from mmvit.train.loop import _autocast, make_optimiser, resolve_precision

    device = torch.device(settings.train.device)
    precision = resolve_precision(settings.train.precision, device)
    model_settings, batch = settings.model, settings.train.batch_size
    model = VisionTransformer(
        img_size=PATCH_SIZE, patch_size=model_settings.patch_size, in_chans=12, num_classes=NUM_CLASSES,
        embed_dim=model_settings.embed_dim, depth=model_settings.depth, num_heads=model_settings.num_heads,
        mlp_ratio=model_settings.mlp_ratio, drop_rate=model_settings.drop_rate,
        attn_drop_rate=model_settings.attn_drop_rate, drop_path_rate=model_settings.drop_path_rate,
    ).to(device).train()
    optimiser = make_optimiser(model, settings, device)
    forward = torch.compile(model) if settings.train.compile else model
    inputs = torch.randn(batch, 12, PATCH_SIZE, PATCH_SIZE, device=device)
    targets = (torch.rand(batch, NUM_CLASSES, device=device) < 0.15).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        with _autocast(device, precision):
            logits = forward(inputs)
        loss = loss_fn(logits.float(), targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def run_train_benchmark(config: str = "small", *, batch_size: int = 64, patches: int = 1024,
                        device: str | None = None, rounds: int = 2, compile: bool = False) -> TrainBenchmark:
    """Each side's best of ``rounds``; the trial runs two epochs of ``patches`` per round and
    the timm step as many steps as one such epoch."""
    from mmvit.train.loop import train_trial

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = trial_settings(config, batch_size, device, epochs=2, compile=compile)
    steps = max(3, math.ceil(patches / batch_size))
    timm_best = trial_best = 0.0
    data_share = math.nan
    with tempfile.TemporaryDirectory(prefix="mmvit-bench-") as folder:
        data = synthetic_data(Path(folder), patches, evaluation_patches=batch_size)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        for _ in range(rounds):
            timm_best = max(timm_best, _timm_rate(settings, steps, warmup=3))
            result = train_trial(settings, data=data, test=False)
            last = result.history[-1]
            if last.samples_per_s > trial_best:
                trial_best, data_share = last.samples_per_s, last.data_seconds / last.seconds
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else math.nan
    return TrainBenchmark(config, device, compile, batch_size, patches, timm_best, trial_best, data_share, peak)
