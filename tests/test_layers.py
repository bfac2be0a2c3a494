"""The package's layers point one way (../shared/design.md): what a lower layer must not import."""

from __future__ import annotations

import subprocess
import sys


def _imported_after(code: str) -> set[str]:
    """The mmvit modules a fresh interpreter has loaded after running ``code``."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\n"
                          "print(' '.join(m for m in sys.modules if m.startswith('mmvit')))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_checking_a_trial_configuration_imports_no_training_code():
    """Metric names and directions live in mmvit.metric_names: validating `train.metric` used to
    import the training package (and numpy) from the configuration."""
    loaded = _imported_after("from mmvit.config import trial_config\n"
                             "trial_config({'train': {'metric': 'hamming_loss'}})")
    assert "mmvit.metric_names" in loaded
    assert not {m for m in loaded if m.startswith(("mmvit.train", "mmvit.models", "mmvit.study"))}, loaded


def test_the_metric_table_is_the_one_training_and_reports_use():
    from mmvit import metric_names
    from mmvit.report import records
    from mmvit.train import loop

    assert records.METRICS is metric_names.AGGREGATE and records.METRIC_NAMES is metric_names.DISPLAY_NAMES
    assert loop.HIGHER_IS_BETTER is metric_names.HIGHER_IS_BETTER
    assert records.LOWER_IS_BETTER == {"hamming_loss"}
