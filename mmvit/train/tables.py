"""Terminal tables of one trial's result (the report module writes the HTML ones).

Names (the model, the classes) go in as :class:`rich.text.Text`, so they print as written
whatever console (markup on or off) the caller passes; the other cells are numbers.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mmvit.config import TrialConfig
from mmvit.data.labels import LABELS_19
from mmvit.train.loop import TrialResult

AGGREGATE = (("AP micro", "ap_micro"), ("AP macro", "ap_macro"), ("F2", "f2"), ("HL", "hamming_loss"))


def _fmt(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.4f}"


def print_trial_result(console: Console, config: TrialConfig, result: TrialResult) -> None:
    console.print(Text.assemble((config.model.fusion, "bold"), f" on {config.data.modalities}, seed {config.seed}: "
                                f"best epoch {result.best_epoch} of {result.epochs_run} (by validation "
                                f"{config.train.metric})"))
    aggregate = Table("split", *(name for name, _ in AGGREGATE), title="Aggregate (threshold "
                      f"{config.train.threshold} for F2 and HL)")
    for split, metrics in (("validation", result.validation), ("test", result.test)):
        aggregate.add_row(split, *(_fmt(metrics[key]) for _, key in AGGREGATE))
    console.print(aggregate)
    classwise = Table("class", "train patches", "val AP", "test AP", title="Class-wise AP")
    for index, name in enumerate(LABELS_19):
        count = result.class_counts[index] if result.class_counts else 0
        classwise.add_row(Text(name), str(count), _fmt(result.validation["ap_per_class"][index]),
                          _fmt(result.test["ap_per_class"][index]))
    console.print(classwise)
    training = sum(record.seconds for record in result.history)
    waiting = sum(record.data_seconds for record in result.history) / training if training else 0.0
    console.print(f"parameters {result.parameters:,} · {result.samples_per_s:,.0f} samples/s (train, "
                  f"{waiting:.0%} of it waiting for batches) · peak memory {result.peak_memory_mb:,.0f} MiB · "
                  f"{result.wall_s:,.0f} s on {result.device}", markup=False)
