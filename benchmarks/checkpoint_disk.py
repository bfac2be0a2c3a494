"""Checkpoint disk per trial, before and after finished trials dropped their resume state.

Usage: python benchmarks/checkpoint_disk.py [--epochs N]

For every fusion at the quick/smoke width (embed 64, depth 8) and at the thesis width (embed 256,
depth 8), builds the model a trial builds, gives Adam a step (so both moments exist) and writes
``best.pt`` and ``last.pt`` with the training loop's own save functions (``last.pt`` with an
``--epochs``-long history), then prints their sizes: a finished trial used to keep both, it now
keeps ``best.pt`` only. ``estimate`` is what ``mmvit-study validate`` assumes for best.pt
(parameters × 4 bytes). Sizes in decimal MB (10⁶ bytes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from mmvit.config import TrialConfig, set_dotted  # noqa: E402
from mmvit.data.bands import input_channels  # noqa: E402
from mmvit.study.checkpoints import BYTES_PER_PARAMETER  # noqa: E402
from mmvit.train import loop  # noqa: E402

FUSIONS = ["early", "modality_token", "channel_token", "middle", "cross_attention", "sct"]
WIDTHS = {"quick (64)": {"model.embed_dim": 64, "model.num_heads": 4}, "thesis (256)": {}}


def trial_config(fusion: str, overrides: dict) -> TrialConfig:
    values: dict = {}
    for key, value in {"model.fusion": fusion, "data.modalities": "s2+s1", **overrides}.items():
        set_dotted(values, key, value)
    return TrialConfig.model_validate(values)


def sizes(config: TrialConfig, folder: Path, epochs: int) -> tuple[int, int, int]:
    """(parameters, best.pt bytes, last.pt bytes) as a trial writes them."""
    model = loop.build_model(config, input_channels(config.data.modalities))
    optimiser = loop.make_optimiser(model, config, torch.device("cpu"))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimiser.step()  # Adam's state (exp_avg, exp_avg_sq, step) exists from the first step on
    metrics = {"ap_macro": 0.5, "ap_micro": 0.5, "f2": 0.5, "hamming_loss": 0.1, "ap_per_class": [0.5] * 19}
    history = [loop.EpochRecord(e, 0.3, 1e-4, metrics, 10.0, 500.0, 1.0) for e in range(1, epochs + 1)]
    state = loop._Progress(history, 0.5, epochs)
    loop._atomic_save({"model": model.state_dict(), "epoch": epochs}, folder / loop.BEST_WEIGHTS)
    loop._save(folder, model, optimiser, schedule, state)
    parameters = sum(p.numel() for p in model.parameters())
    return parameters, (folder / loop.BEST_WEIGHTS).stat().st_size, (folder / loop.CHECKPOINT).stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="Epochs of history in last.pt (quick profile: 15).")
    args = parser.parse_args()
    mb = 1e6
    print(f"{'fusion':<16} {'width':<13} {'params':>8} {'estimate':>9} {'best.pt':>8} {'last.pt':>8} "
          f"{'kept before':>12} {'kept after':>11} {'saved':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for width, overrides in WIDTHS.items():
            for fusion in FUSIONS:
                parameters, best, last = sizes(trial_config(fusion, overrides), Path(tmp), args.epochs)
                before, after = best + last, best
                print(f"{fusion:<16} {width:<13} {parameters / 1e6:>7.2f}M {parameters * BYTES_PER_PARAMETER / mb:>6.1f} MB "
                      f"{best / mb:>5.1f} MB {last / mb:>5.1f} MB {before / mb:>9.1f} MB {after / mb:>8.1f} MB "
                      f"{1 - after / before:>6.0%}")


if __name__ == "__main__":
    main()
