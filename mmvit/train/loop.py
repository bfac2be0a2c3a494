"""One trial's training: epochs, Adam + cosine schedule, validation every epoch, atomic
checkpoints, best-epoch selection on validation, test metrics once at the best epoch.

Reproducibility: every epoch re-seeds torch (dropout, stochastic depth) and the batch loader's
generator (order and augmentation draws, :mod:`mmvit.data.loader`) from ``(seed, epoch)``,
so a run resumed from its epoch-``k`` checkpoint computes exactly what an uninterrupted run
computes (on CPU; cuDNN/bf16 kernels may differ in the last bits on GPU). Arms of a study that
share a seed see the same data order and — where shapes allow — the same initial weights.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmvit.config import TrialConfig
from mmvit.data.loader import BatchLoader, SplitArrays, TrialData, build_datasets
from mmvit.errors import DataError
from mmvit.metric_names import HIGHER_IS_BETTER
from mmvit.train.metrics import compute_metrics

CHECKPOINT = "last.pt"
BEST_WEIGHTS = "best.pt"


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    lr: float
    validation: dict
    seconds: float
    samples_per_s: float
    data_seconds: float = 0.0  # of ``seconds``, spent waiting for batches (0 in older checkpoints)


@dataclass
class TrialResult:
    best_epoch: int
    validation: dict  # metrics at the best epoch
    test: dict  # metrics at the best epoch; empty when trained with test=False
    history: list[EpochRecord]
    parameters: int
    samples_per_s: float
    peak_memory_mb: float
    wall_s: float
    epochs_run: int
    device: str
    class_counts: list[int] = field(default_factory=list)
    precision: str = "fp32"

    def to_dict(self) -> dict:
        return asdict(self)


EpochCallback = Callable[[EpochRecord, Path | None], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first *visible* GPU (Ray sets CUDA_VISIBLE_DEVICES per trial) or the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


def _inputs(batch: dict) -> dict[str, torch.Tensor]:
    return {key: value for key, value in batch.items() if key != "label"}


def make_loader(data: TrialData, split: SplitArrays, device: torch.device, *, batch_size: int,
                train: bool = False) -> BatchLoader:
    """Training batches are shuffled and augmented; evaluation batches are in order, normalised only."""
    return BatchLoader(split, batch_size=batch_size, device=device, normalisation=data.normalisation,
                       augment=data.augment if train else None, shuffle=train)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` is bf16 autocast on GPUs (thesis-scale batches) and fp32 on CPUs, where bf16
    matmuls are slower than fp32 ones."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


_PROC_SELF = Path("/proc/self")


def _reset_peak_memory(device: torch.device) -> None:
    """Start this trial's peak afresh: Ray runs trial after trial in one reused process, whose
    peak would otherwise be the largest of every earlier trial's. On CUDA torch's allocator
    counts it; on Linux writing 5 to ``clear_refs`` resets the process's resident high-water
    mark (VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        (_PROC_SELF / "clear_refs").write_text("5")
    except OSError:
        pass  # not Linux (or /proc read-only): the process's lifetime peak, as getrusage has it


def _peak_memory_mb(device: torch.device) -> float:
    """The trial's peak: GPU memory torch allocated on CUDA; resident memory on a CPU (which
    counts the pages of the memory-mapped cache the trial read)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in (_PROC_SELF / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # KiB → MiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def _atomic_save(state: dict, path: Path) -> None:
    tmp = path.with_suffix(".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: BatchLoader, threshold: float, precision: str = "fp32") -> dict:
    """Metrics of ``model`` on every sample of ``loader`` (scores and labels stay on the device
    until the split is done: one transfer, no per-batch synchronisation)."""
    model.eval()
    scores, targets = [], []
    for batch in loader.batches():
        with _autocast(loader.device, precision):
            logits = model(_inputs(batch))
        scores.append(torch.sigmoid(logits.float()))
        targets.append(batch["label"])
    return compute_metrics(torch.cat(scores).cpu().numpy(), torch.cat(targets).cpu().numpy(), threshold)


def lr_factor(kind: str, *, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier per optimiser step: a linear warm-up from 0 over
    ``warmup_steps`` (ViTs trained from scratch with Adam at a high rate can collapse onto the
    label prior in their first steps without one), then cosine annealing to 0 at
    ``total_steps`` (thesis §6.2) or constant. Per step, not per epoch, so a short run anneals
    as smoothly as a long one."""
    warmup_steps = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _better(metric: str, value: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if HIGHER_IS_BETTER[metric] else value < best


def build_model(config: TrialConfig, in_chans: dict[str, int]) -> nn.Module:
    from mmvit.models import create_model, hyperparameters

    # A TrialConfig holds every model's hyper-parameters; each model takes its own.
    own = hyperparameters(config.model.fusion)
    hparams = {k: v for k, v in config.model.model_dump(exclude={"fusion"}).items() if k in own}
    torch.manual_seed(config.seed)  # paired initial weights across arms with equal shapes
    return create_model(config.model.fusion, in_chans=in_chans, num_classes=19, img_size=120, **hparams)


@torch.no_grad()
def init_head_bias(model: nn.Module, class_counts: np.ndarray, patches: int) -> None:
    """Start the head's biases at the training split's label prior, ``logit(count / patches)``:
    the first steps then train features instead of spending a large-gradient phase learning
    the prior, which at a high Adam rate can leave a ViT stuck predicting it (an initialisation
    only; a class without positives gets the bias of half a patch)."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or head.bias is None or patches <= 0:
        return
    prior = np.clip((np.asarray(class_counts, dtype=np.float64) + 0.5) / (patches + 1), 1e-4, 1 - 1e-4)
    head.bias.copy_(torch.as_tensor(np.log(prior / (1 - prior)), dtype=head.bias.dtype))


def make_optimiser(model: nn.Module, config: TrialConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam (thesis §6.2), fused into one kernel per step where torch has one for the device."""
    fused = device.type in ("cuda", "cpu")
    return torch.optim.Adam(model.parameters(), lr=config.train.lr, betas=config.train.betas,
                            weight_decay=config.train.weight_decay, fused=fused)


@dataclass
class _Progress:
    """What a checkpoint restores besides the weights."""

    history: list[EpochRecord] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0

    @property
    def next_epoch(self) -> int:
        return len(self.history) + 1


def _restore(checkpoint_dir: Path | None, model: nn.Module, optimiser, schedule,
             device: torch.device) -> _Progress:
    if checkpoint_dir is None or not (checkpoint_dir / CHECKPOINT).is_file():
        return _Progress()
    state = torch.load(checkpoint_dir / CHECKPOINT, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    schedule.load_state_dict(state["schedule"])
    return _Progress([EpochRecord(**record) for record in state["history"]],
                     state["best_value"], state["best_epoch"])


def _build(config: TrialConfig, data: TrialData, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer,
                                                                               torch.optim.lr_scheduler.LambdaLR]:
    """The model (head biases at the label prior) on ``device``, its optimiser, and the per-step
    learning-rate schedule (warm-up, then cosine over every step of the trial)."""
    model = build_model(config, data.in_chans)
    init_head_bias(model, data.class_counts, len(data.train))
    model = model.to(device)
    optimiser = make_optimiser(model, config, device)
    steps_per_epoch = math.ceil(len(data.train) / config.train.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor(
        config.train.scheduler, total_steps=config.train.epochs * steps_per_epoch,
        warmup_steps=round(config.train.warmup_epochs * steps_per_epoch)))
    return model, optimiser, schedule


def _save(checkpoint_dir: Path | None, model: nn.Module, optimiser, schedule, state: _Progress) -> Path | None:
    """The epoch checkpoint a resumed trial starts from (None without a checkpoint folder)."""
    if checkpoint_dir is None:
        return None
    path = checkpoint_dir / CHECKPOINT
    _atomic_save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                  "epoch": len(state.history), "history": [asdict(r) for r in state.history],
                  "best_value": state.best_value, "best_epoch": state.best_epoch}, path)
    return path


def _load_best(model: nn.Module, checkpoint_dir: Path | None, best_state: dict | None, device: torch.device) -> None:
    """The weights of the best validation epoch, where the test split is measured."""
    if checkpoint_dir is not None:
        model.load_state_dict(torch.load(checkpoint_dir / BEST_WEIGHTS, map_location=device, weights_only=False)["model"])
    elif best_state is not None:
        model.load_state_dict(best_state)


def _train_epoch(step: Callable, loader: BatchLoader, seed: int) -> tuple[float, int, float]:
    """Mean training loss, samples seen, and the seconds the loop waited for batches; the loss
    is summed on the device and read once.

    The wait is the data path's share of the epoch: on a CPU the kernels that build each batch,
    on a GPU whatever the prefetching thread did not hide (plus the augmentation's kernel
    launches, which return at once unless the device's queue is full)."""
    total = torch.zeros((), device=loader.device)
    seen, waited = 0, 0.0
    batches = loader.batches(seed)
    while True:
        asked = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - asked
        if batch is None:
            return float(total) / max(seen, 1), seen, waited
        total += step(batch) * len(batch["label"])
        seen += len(batch["label"])


def train_trial(config: TrialConfig, *, checkpoint_dir: Path | None = None,
                on_epoch: EpochCallback | None = None, data: TrialData | None = None,
                on_resume: Callable[[list[EpochRecord]], None] | None = None,
                progress: bool = False, test: bool = True) -> TrialResult:
    """Train ``config`` to the end (resuming from ``checkpoint_dir/last.pt`` if present).
    ``test=False`` (a search trial) never touches the test split: the result's ``test`` is empty."""
    started = time.time()
    device = resolve_device(config.train.device)
    _reset_peak_memory(device)
    precision = resolve_precision(config.train.precision, device)
    data = data or build_datasets(config, progress=progress)
    model, optimiser, schedule = _build(config, data, device)
    epochs, batch_size = config.train.epochs, config.train.batch_size
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state = _restore(checkpoint_dir, model, optimiser, schedule, device)
    if state.history and on_resume is not None:
        on_resume(state.history)

    forward = torch.compile(model) if config.train.compile else model
    loss_fn = nn.BCEWithLogitsLoss()

    def step(batch: dict) -> torch.Tensor:
        with _autocast(device, precision):
            logits = forward(_inputs(batch))
        loss = loss_fn(logits.float(), batch["label"])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        return loss.detach()

    eval_batch = config.train.eval_batch_size or 2 * batch_size
    train_loader = make_loader(data, data.train, device, batch_size=batch_size, train=True)
    validation_loader = make_loader(data, data.validation, device, batch_size=eval_batch)
    metric = config.train.metric
    best_state = None
    for epoch in range(state.next_epoch, epochs + 1):
        seed = _epoch_seed(config.seed, epoch)
        torch.manual_seed(seed)  # dropout and stochastic depth; the loader draws from its own generator
        model.train()
        epoch_start = time.perf_counter()
        train_loss, seen, waited = _train_epoch(step, train_loader, seed)
        seconds = time.perf_counter() - epoch_start
        validation = evaluate(forward, validation_loader, config.train.threshold, precision)
        record = EpochRecord(epoch, train_loss, optimiser.param_groups[0]["lr"], validation, seconds,
                             seen / seconds, waited)
        state.history.append(record)
        if _better(metric, validation[metric], state.best_value):
            state.best_value, state.best_epoch = validation[metric], epoch
            if checkpoint_dir is not None:
                _atomic_save({"model": model.state_dict(), "epoch": epoch}, checkpoint_dir / BEST_WEIGHTS)
            else:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        checkpoint_path = _save(checkpoint_dir, model, optimiser, schedule, state)
        if on_epoch is not None:
            on_epoch(record, checkpoint_path)

    history, best_epoch = state.history, state.best_epoch
    train_seconds = sum(r.seconds for r in history)
    train_samples = sum(r.samples_per_s * r.seconds for r in history)
    if best_epoch == 0:
        raise DataError(f"No epoch produced a finite validation {metric}: the validation split has no "
                        "positive label. Use a larger validation split.")
    test_metrics: dict = {}
    if test:
        _load_best(model, checkpoint_dir, best_state, device)
        test_loader = make_loader(data, data.test, device, batch_size=eval_batch)
        test_metrics = evaluate(forward, test_loader, config.train.threshold, precision)
    return TrialResult(
        best_epoch=best_epoch,
        validation=history[best_epoch - 1].validation,
        test=test_metrics,
        history=history,
        parameters=sum(p.numel() for p in model.parameters()),
        samples_per_s=train_samples / train_seconds if train_seconds else float("nan"),
        peak_memory_mb=_peak_memory_mb(device),
        wall_s=time.time() - started,
        epochs_run=len(history),
        device=str(device),
        precision=precision,
        class_counts=data.class_counts.tolist(),
    )
