"""Training: reproducible, resumable to the same numbers, best epoch chosen on validation."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mmvit.cli import app
from mmvit.config import trial_config
from mmvit.data.loader import BatchLoader, build_datasets
from mmvit.train import loop
from mmvit.train.loop import evaluate, train_trial

TINY = {"patch_size": 30, "depth": 2, "embed_dim": 32, "num_heads": 2, "modality_depth": 1, "fusion_depth": 1}


def _config(demo_root, tmp_path, **train):
    return trial_config({
        "model": {"fusion": "early", **TINY},
        "data": {"root": str(demo_root), "cache_dir": str(tmp_path / "cache"), "num_workers": 0},
        "augment": {"synchronised": False, "modality_drop": 0.3},
        "train": {"epochs": 3, "batch_size": 8, "lr": 3e-3, **train},
        "seed": 1,
    })


def _flat(result):
    return [r.train_loss for r in result.history] + [r.validation["ap_macro"] for r in result.history] + [
        result.test["ap_macro"], result.test["ap_micro"], result.test["f2"], result.test["hamming_loss"]]


def test_resumed_run_equals_uninterrupted_run(demo_root, tmp_path):
    config = _config(demo_root, tmp_path)
    whole = train_trial(config, checkpoint_dir=tmp_path / "whole")

    class Interrupt(Exception):
        pass

    def stop_after_two(record, checkpoint):
        if record.epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_trial(config, checkpoint_dir=tmp_path / "resumed", on_epoch=stop_after_two)
    epochs_seen = []
    resumed = train_trial(config, checkpoint_dir=tmp_path / "resumed",
                          on_epoch=lambda record, _: epochs_seen.append(record.epoch))
    assert epochs_seen == [3], "a resumed run must not repeat finished epochs"
    assert _flat(resumed) == _flat(whole)
    assert resumed.best_epoch == whole.best_epoch


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux resets the resident peak")
def test_a_trial_reports_its_own_peak_memory_not_an_earlier_trials(demo_root, tmp_path):
    """Ray runs trial after trial in one process: a large earlier trial (here, 800 MB touched
    and freed) must not become every later trial's peak in the cost table."""
    import resource

    earlier = np.ones(800 * 2**20 // 8)
    del earlier
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = train_trial(_config(demo_root, tmp_path, epochs=1, batch_size=4), test=False)
    assert 0 < result.peak_memory_mb < process_peak - 500, (result.peak_memory_mb, process_peak)


def test_an_epoch_records_how_long_it_waited_for_batches(demo_root, tmp_path, monkeypatch):
    # A loader that takes 50 ms a training batch: the epoch's record must show the wait.
    config = _config(demo_root, tmp_path, epochs=1, batch_size=4)
    train_trial(config, test=False)  # a process's first batch also waits for the kernels to load
    fast = train_trial(config, test=False).history[0]
    batches = BatchLoader.batches

    def slow(self, seed=0):
        for batch in batches(self, seed):
            if self.augment is not None:
                time.sleep(0.05)
            yield batch

    monkeypatch.setattr(BatchLoader, "batches", slow)
    waited = train_trial(config, test=False).history[0]
    steps = math.ceil(round(waited.samples_per_s * waited.seconds) / 4)

    assert 0.05 * steps <= waited.data_seconds < waited.seconds
    assert waited.data_seconds - fast.data_seconds >= 0.04 * steps
    assert 0 < fast.data_seconds < fast.seconds


def test_seed_makes_runs_reproducible(demo_root, tmp_path):
    config = _config(demo_root, tmp_path, epochs=1)
    first, second = train_trial(config), train_trial(config)
    assert _flat(first) == _flat(second)
    other = train_trial(config.model_copy(update={"seed": 2}))
    assert _flat(other) != _flat(first)


def test_best_epoch_on_validation_and_test_at_best(demo_root, tmp_path):
    config = _config(demo_root, tmp_path, epochs=3, metric="hamming_loss")
    result = train_trial(config, checkpoint_dir=tmp_path / "ckpt")
    values = [r.validation["hamming_loss"] for r in result.history]
    assert result.best_epoch == int(np.argmin(values)) + 1  # lower is better for HL
    assert result.validation == result.history[result.best_epoch - 1].validation
    data = build_datasets(config)
    model = loop.build_model(config, data.in_chans)
    model.load_state_dict(torch.load(tmp_path / "ckpt" / loop.BEST_WEIGHTS, weights_only=False)["model"])
    test = evaluate(model, loop.make_loader(data, data.test, torch.device("cpu"), batch_size=16), 0.5)
    assert test["ap_macro"] == pytest.approx(result.test["ap_macro"], abs=1e-9)


def test_without_test_the_test_split_is_never_read(demo_root, tmp_path):
    """A search trial (test=False) measures nothing on the test split: selection sees validation only."""
    import dataclasses

    class Untouchable(dict):
        # every way to reach an image array (a loader takes them by key, a gather by items)
        def _refuse(self, *args):
            raise AssertionError("the test split was read")

        items = values = get = __getitem__ = _refuse

    config = _config(demo_root, tmp_path, epochs=1)
    data = build_datasets(config)
    data = dataclasses.replace(data, test=dataclasses.replace(data.test, images=Untouchable(data.test.images)))
    result = train_trial(config, data=data, checkpoint_dir=tmp_path / "ckpt", test=False)
    assert result.test == {} and result.best_epoch == 1 and "ap_macro" in result.validation
    with pytest.raises(AssertionError, match="the test split was read"):
        train_trial(config, data=data)


def test_train_command_prints_both_tables(demo_root, tmp_path):
    result = CliRunner().invoke(app, [
        "train", "--data", str(demo_root), "--set", "model.fusion=sct", "--set", "train.epochs=1",
        "--set", "train.batch_size=8", "--set", f"data.cache_dir={tmp_path / 'cache'}",
        "--set", "data.num_workers=0", *(f"--set=model.{k}={v}" for k, v in tiny("sct").items()),
    ])
    assert result.exit_code == 0, result.output
    for text in ("AP micro", "AP macro", "F2", "HL", "Class-wise AP", "Urban fabric", "Marine waters",
                 "parameters", "samples/s", "peak memory"):
        assert text in result.output


def tiny(fusion: str) -> dict:
    """TINY in the settings ``fusion`` takes (Middle Fusion: two stacks, no ``depth``)."""
    dropped = ("depth",) if fusion == "middle" else ("modality_depth", "fusion_depth")
    return {k: v for k, v in TINY.items() if k not in dropped}


def test_train_command_refuses_a_setting_the_model_does_not_take():
    """Middle Fusion takes modality_depth and fusion_depth; `depth` used to be dropped when the
    model was built, and the default 6 + 2 model trained."""
    result = CliRunner().invoke(app, ["train", "--set", "model.fusion=middle", "--set", "model.depth=4"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "model.depth is not a setting of model 'middle'" in text and "modality_depth, fusion_depth" in text
    assert "Traceback" not in result.output


def test_train_command_rejects_unknown_key_without_traceback(tmp_path):
    result = CliRunner().invoke(app, ["train", "--set", "model.dept=4"])
    assert result.exit_code == 1
    assert "model.dept" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("fusion", ["vit", "early", "modality_token", "channel_token", "middle",
                                    "cross_attention", "sct"])
def test_every_model_trains_through_the_command(demo_root, tmp_path, fusion):
    modalities = "rgb" if fusion == "vit" else "rgb+s1"
    result = CliRunner().invoke(app, [
        "train", "--data", str(demo_root), "--set", f"model.fusion={fusion}",
        "--set", f"data.modalities={modalities}", "--set", "train.epochs=1", "--set", "train.batch_size=16",
        "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.num_workers=0",
        *(f"--set=model.{k}={v}" for k, v in tiny(fusion).items()),
    ])
    assert result.exit_code == 0, result.output
    assert f"{fusion} on {modalities}" in result.output and "best epoch 1 of 1" in result.output


def test_schedule_warms_up_linearly_then_anneals_per_step_to_zero():
    factor = loop.lr_factor("cosine", total_steps=100, warmup_steps=10)
    warm = [factor(step) for step in range(10)]
    assert warm == sorted(warm) and warm[0] < 0.1 and warm[-1] < 1.0
    assert factor(10) == 1.0 and abs(factor(55) - 0.5) < 1e-9 and factor(100) == 0.0
    after = [factor(step) for step in range(10, 101)]
    assert after == sorted(after, reverse=True), "cosine never rises again"
    assert loop.lr_factor("constant", total_steps=100, warmup_steps=0)(99) == 1.0
    assert loop.lr_factor("cosine", total_steps=5, warmup_steps=50)(4) < 1.0, "warm-up capped at the run"


def test_head_starts_at_the_training_label_prior(demo_root):
    config = trial_config({"model": {"fusion": "sct", "depth": 1, "embed_dim": 32, "num_heads": 2},
                           "data": {"root": str(demo_root)}})
    data = build_datasets(config)
    model = loop.build_model(config, data.in_chans)
    loop.init_head_bias(model, data.class_counts, len(data.train))
    frequency = (data.class_counts + 0.5) / (len(data.train) + 1)
    assert np.allclose(torch.sigmoid(model.head.bias).detach().numpy(), frequency, atol=1e-6)
    with torch.no_grad():  # a fresh model predicts about the prior: the features start near zero effect
        batch = next(loop.make_loader(data, data.train, torch.device("cpu"), batch_size=8).batches())
        scores = torch.sigmoid(model(loop._inputs(batch)))
    assert np.abs(scores.mean(0).numpy() - frequency).max() < 0.15


def test_precision_is_resolved_and_recorded(demo_root):
    assert loop.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert loop.resolve_precision("auto", torch.device("cuda")) == "bf16"
    config = trial_config({"model": {"fusion": "early", "depth": 1, "patch_size": 30, "embed_dim": 32, "num_heads": 2},
                           "train": {"epochs": 1, "batch_size": 16, "precision": "bf16"},
                           "data": {"root": str(demo_root), "num_workers": 0}})
    assert train_trial(config).precision == "bf16"
