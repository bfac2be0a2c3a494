"""Model cost: training-step throughput and peak memory of every model, next to timm.

A training step is forward + backward + Adam step on a random batch (bf16 autocast on CUDA,
fp32 on CPU), timed after warm-up steps. Two references, measured in the same run:

* the **baseline**: timm's own ``VisionTransformer`` on the same settings and the same input
  channels as one image (s2 + s1 = 12 channels), i.e. what Early Fusion should cost;
* each model's **timm-equivalent**: timm ``VisionTransformer`` passes at the model's token
  counts and depths (e.g. SCT: two ViTs on 10 and 2 channels), summed as time per sample;
  a model within 10% of it spends its time in timm-grade blocks, not in its own glue.

Each config is measured in one fresh process. Speed: all networks in turn (a fresh instance
each time) for a few rounds, keeping each one's fastest round, so that drifts of the machine
hit all alike and ratios compare like with like. Memory: then each network's peak over two
training steps, which covers the model, its gradients, Adam's state, the batch and the
activations: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak resident set
(Linux ``VmHWM``, reset before each network through ``/proc/self/clear_refs`` after freed
memory is handed back) above the resident set before the network was built, so allocator
slack counts too (no psutil; NaN where ``/proc`` is missing).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, TypeVar

T = TypeVar("T")

BASELINE = "timm ViT"
MODEL_TARGET = 0.9
"""A model should reach this fraction of its timm-equivalent's samples/s."""
EARLY_TARGET = 0.95
"""Early Fusion should reach this fraction of the baseline's samples/s."""


@dataclass(frozen=True)
class BenchConfig:
    """Shared architecture settings of one benchmark block (all models and timm alike)."""

    name: str
    patch_size: int = 20
    depth: int = 8
    embed_dim: int = 256
    num_heads: int = 8
    modality_depth: int = 6
    fusion_depth: int = 2
    in_chans: tuple[tuple[str, int], ...] = (("s2", 10), ("s1", 2))

    def hparams(self, model: str) -> dict[str, Any]:
        depths = (dict(modality_depth=self.modality_depth, fusion_depth=self.fusion_depth)
                  if model == "middle" else dict(depth=self.depth))
        return dict(patch_size=self.patch_size, embed_dim=self.embed_dim, num_heads=self.num_heads, **depths)


THESIS = BenchConfig("thesis")
"""Thesis Table 7.1: patch 20, depth 8, dim 256, 8 heads; Middle Fusion 6 + 2."""
SMALL = BenchConfig("small", patch_size=30, depth=4, embed_dim=128, num_heads=4, modality_depth=3,
                    fusion_depth=1)


@dataclass(frozen=True)
class TimmRun:
    """timm ``VisionTransformer`` on one (channels, height, width) image."""

    in_chans: int
    height: int
    depth: int

    def describe(self) -> str:
        size = "" if self.height == 120 else f", {self.height}x120 px"
        depth = "patch embedding only" if self.depth == 0 else f"depth {self.depth}"
        return f"ViT({self.in_chans} ch, {depth}{size})"


@dataclass(frozen=True)
class ModelRun:
    """One of our models by registry name."""

    name: str


@dataclass
class Measurement:
    samples_per_s: float
    peak_mb: float
    params: int
    tokens: int


@dataclass
class ModelBenchRow:
    config: str
    model: str
    params: int
    tokens: int
    samples_per_s: float
    peak_mb: float
    baseline_per_s: float
    equivalent: str
    equivalent_per_s: float
    equivalent_peak_mb: float
    target: float = MODEL_TARGET

    @property
    def vs_baseline(self) -> float:
        return self.samples_per_s / self.baseline_per_s

    @property
    def ratio(self) -> float:
        """Samples/s relative to the timm-equivalent (1.0 = as fast as timm)."""
        return self.samples_per_s / self.equivalent_per_s

    @property
    def meets_target(self) -> bool:
        return (self.vs_baseline if self.model == "early" else self.ratio) >= self.target


def timm_equivalent(model: str, config: BenchConfig) -> list[TimmRun]:
    """timm ViT passes with the model's patch embeddings, token counts and depths.

    A model that is a ViT on one image (vit, early) is that timm ViT. Otherwise an encoder over
    N tokens is a timm ViT on a 1-channel image of N patches (its tiny patch embedding stands
    in for the model's glue: fusion layers, concatenations), and a patch embedding that is not
    part of such an image is a depth-0 timm ViT on that modality. So Channel Token Fusion's
    (c1+c2)·P tokens are a 1-channel image (c1+c2) times as tall, whose patch embedding does
    exactly the grouped convolution's work; Modality Token Fusion is both modalities' patch
    embeddings plus an encoder on a twice-as-tall image (on CPU one 6-channel convolution of
    the same FLOPs runs twice as fast as the 10- and 2-channel pair, so keep the real shapes).
    """
    chans = list(dict(config.in_chans).values())
    depth = config.depth
    return {
        "vit": [TimmRun(chans[0], 120, depth)],
        "early": [TimmRun(sum(chans), 120, depth)],
        "modality_token": [*(TimmRun(c, 120, 0) for c in chans), TimmRun(1, 240, depth)],
        "channel_token": [TimmRun(1, 120 * sum(chans), depth)],
        "middle": [*(TimmRun(c, 120, config.modality_depth) for c in chans),
                   TimmRun(1, 120, config.fusion_depth)],
        "cross_attention": [TimmRun(c, 120, depth) for c in chans],
        "sct": [TimmRun(c, 120, depth) for c in chans],
    }[model]


def _build(run: TimmRun | ModelRun, config: BenchConfig, batch_size: int, device: str):
    """The network, a random input batch and the tokens per attention sequence."""
    import torch

    if isinstance(run, ModelRun):
        from mmvit.models import create_model

        in_chans = dict(config.in_chans[:1]) if run.name == "vit" else dict(config.in_chans)
        model = create_model(run.name, in_chans=in_chans, **config.hparams(run.name))
        inputs = {key: torch.randn(batch_size, chans, 120, 120, device=device)
                  for key, chans in in_chans.items()}
        return model, inputs, model.num_tokens
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=(run.height, 120), patch_size=config.patch_size, in_chans=run.in_chans,
                              num_classes=19, embed_dim=config.embed_dim, depth=run.depth,
                              num_heads=config.num_heads, drop_path_rate=0.25)
    inputs = torch.randn(batch_size, run.in_chans, run.height, 120, device=device)
    return model, inputs, model.patch_embed.num_patches + 1


def keep_freed_memory() -> None:
    """Make glibc keep freed memory for reuse, as tcmalloc or jemalloc would (the PyTorch CPU
    tuning guide's advice). By default it hands big blocks back to the OS after each step and
    page-faults them in again, which made the same model's speed vary by 20% between runs."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if hasattr(libc, "mallopt"):
        trim_threshold, top_pad, mmap_threshold = -1, -2, -3
        libc.mallopt(mmap_threshold, 32 * 2**20)
        libc.mallopt(trim_threshold, 2**31 - 1)
        libc.mallopt(top_pad, 64 * 2**20)


def _rss_kb(field: str) -> float:
    try:
        with open("/proc/self/status") as status:
            return float(next(line.split()[1] for line in status if line.startswith(field + ":")))
    except OSError:
        return math.nan


def _reset_rss_peak() -> float:
    """Give freed memory back, restart the peak at the current resident set; return it (kB)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return math.nan
    return _rss_kb("VmRSS")


def _train(run: TimmRun | ModelRun, config: BenchConfig, batch_size: int, steps: int, warmup: int,
           device: str, memory: bool) -> Measurement:
    """Samples/s over ``steps`` training steps after ``warmup`` ones; the peak memory if asked
    (NaN otherwise: on CPU measuring it gives memory back to the OS, which slows what follows)."""
    import torch
    import torch.nn.functional as F

    on_cuda = device.startswith("cuda")
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _reset_rss_peak() * 1024 if memory else math.nan
    torch.manual_seed(0)
    model, inputs, tokens = _build(run, config, batch_size, device)
    model = model.to(device).train()
    target = torch.rand(batch_size, 19, device=device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast:
            logits = model(inputs)
        F.binary_cross_entropy_with_logits(logits.float(), target).backward()
        optimiser.step()

    for _ in range(warmup):
        step()
    if on_cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if on_cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if on_cuda else _rss_kb("VmHWM") * 1024
    return Measurement(batch_size * steps / elapsed, (peak - before) / 2**20,
                       sum(p.numel() for p in model.parameters()), tokens)


def _measure(runs: Sequence[TimmRun | ModelRun], config: BenchConfig, batch_size: int, steps: int,
             warmup: int, rounds: int, device: str) -> dict[TimmRun | ModelRun, Measurement]:
    """Speed first: each run's best samples/s of ``rounds``, the runs taken in turn in every
    round (a fresh instance each time: on CPU one instance can be 20% slower than the next).
    Then memory: each run's peak over two training steps (the second with Adam's state);
    last, because on CPU measuring it hands freed memory back, which slows what follows."""
    if not device.startswith("cuda"):
        keep_freed_memory()
    best: dict[TimmRun | ModelRun, float] = {}
    for _ in range(rounds):
        for run in runs:
            rate = _train(run, config, batch_size, steps, warmup, device, memory=False).samples_per_s
            best[run] = max(best.get(run, 0.0), rate)
    measured = {run: _train(run, config, batch_size, 1, 1, device, memory=True) for run in runs}
    for run, rate in best.items():
        measured[run].samples_per_s = rate
    return measured


def _in_fresh_process(function: Callable[..., T], *args: Any) -> T:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def run_model_benchmark(configs: Sequence[BenchConfig] = (SMALL, THESIS), batch_size: int = 32,
                        steps: int = 10, device: str | None = None, warmup: int = 3, rounds: int = 3,
                        models: Sequence[str] | None = None) -> list[ModelBenchRow]:
    """One row per config × (baseline, each model): samples/s, peak memory, and the ratios to
    the baseline and to the model's timm-equivalent. ``models`` = None: every registered one."""
    import torch

    from mmvit.models import list_models

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = list(models or list_models())
    rows = []
    for config in configs:
        baseline_run = timm_equivalent("early", config)[0]
        parts = {name: timm_equivalent(name, config) for name in names}
        timm_runs = [part for name in names for part in parts[name]]
        runs = list(dict.fromkeys([baseline_run, *map(ModelRun, names), *timm_runs]))
        measured = _in_fresh_process(_measure, runs, config, batch_size, steps, warmup, rounds, device)
        baseline = measured[baseline_run]
        rows.append(ModelBenchRow(config.name, f"{BASELINE} (baseline)", baseline.params, baseline.tokens,
                                  baseline.samples_per_s, baseline.peak_mb, baseline.samples_per_s,
                                  baseline_run.describe(), baseline.samples_per_s, baseline.peak_mb))
        for name in names:
            ours, equivalent = measured[ModelRun(name)], [measured[part] for part in parts[name]]
            rows.append(ModelBenchRow(
                config.name, name, ours.params, ours.tokens, ours.samples_per_s, ours.peak_mb,
                baseline.samples_per_s, " + ".join(part.describe() for part in parts[name]),
                1 / sum(1 / m.samples_per_s for m in equivalent), sum(m.peak_mb for m in equivalent),
                EARLY_TARGET if name == "early" else MODEL_TARGET))
    return rows


def summary(rows: Sequence[ModelBenchRow]) -> str:
    """A plain-text table; ``target`` is Early ≥ 0.95× the baseline, others ≥ 0.9× timm-equivalent."""
    header = (f"{'config':<7} {'model':<20} {'params':>7} {'tokens':>6} {'samples/s':>10} {'peak MB':>8} "
              f"{'vs base':>7} {'timm-eq/s':>10} {'eq MB':>7} {'ratio':>6} {'target':>6}  timm-equivalent")
    lines = [header, "-" * len(header)]
    for row in rows:
        baseline = row.model.startswith(BASELINE)
        lines.append(
            f"{row.config:<7} {row.model:<20} {row.params / 1e6:>6.2f}M {row.tokens:>6} "
            f"{row.samples_per_s:>10.1f} {row.peak_mb:>8.0f} {row.vs_baseline:>6.2f}x "
            f"{row.equivalent_per_s:>10.1f} {row.equivalent_peak_mb:>7.0f} {row.ratio:>5.2f}x "
            f"{'' if baseline else 'ok' if row.meets_target else 'MISS':>6}  {row.equivalent}")
    return "\n".join(lines)

