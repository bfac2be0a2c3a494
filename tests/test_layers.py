"""The package's layers point one way (../shared/design.md): what a lower layer must not import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "mmvit"


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
                             "trial_config({'train': {'metric': 'hamming_loss'}, 'data': {'speckle_filter': 'Lee5'}})")
    assert "mmvit.metric_names" in loaded and "mmvit.speckle_names" in loaded
    assert not {m for m in loaded if m.startswith(("mmvit.train", "mmvit.models", "mmvit.study", "mmvit.data"))}, loaded


def _mmvit_imports(path: Path) -> set[str]:
    """Every mmvit module a source file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmvit"):
            found.add(node.module)  # and `from mmvit import study` names the module it imports:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("mmvit")}
    return found


def _reaches(folder_or_file: str, forbidden: tuple[str, ...]) -> dict[str, set[str]]:
    paths = [PACKAGE / folder_or_file] if folder_or_file.endswith(".py") else sorted((PACKAGE / folder_or_file).rglob("*.py"))
    hits = {str(p.relative_to(PACKAGE)): {m for m in _mmvit_imports(p) if m.startswith(forbidden)} for p in paths}
    return {name: modules for name, modules in hits.items() if modules}


def test_the_report_imports_nothing_from_the_study_driver():
    """report and study both stand on mmvit.storage (paths, connection) and mmvit.record_schema."""
    assert _reaches("report", ("mmvit.study", "mmvit.train", "mmvit.data", "mmvit.models")) == {}


def test_the_configuration_imports_nothing_from_data_or_training():
    assert _reaches("config.py", ("mmvit.data", "mmvit.train", "mmvit.study", "mmvit.models")) == {}


def test_storage_knows_nothing_of_studies_trials_or_reports():
    assert _reaches("storage", ("mmvit.study", "mmvit.report", "mmvit.train", "mmvit.data", "mmvit.models")) == {}


def test_the_metric_table_is_the_one_training_and_reports_use():
    from mmvit import metric_names
    from mmvit.report import records
    from mmvit.train import loop

    assert records.METRICS is metric_names.AGGREGATE and records.METRIC_NAMES is metric_names.DISPLAY_NAMES
    assert loop.HIGHER_IS_BETTER is metric_names.HIGHER_IS_BETTER
    assert records.LOWER_IS_BETTER == {"hamming_loss"}
