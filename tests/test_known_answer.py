"""The known-answer check: the demo archive's generative model fixes the ranking S2+S1 > S2 > S1
(mmvit/data/demo.py), so a quick study of the three arms with learned models and three paired
seeds must find it — each step significant after Holm. It checks data, training, storage and
statistics together; `.ci/run` runs it (slow: minutes per demo archive)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmvit.report.analysis import arm_results, comparison_pairs, comparison_tests
from mmvit.report.records import load_study_record
from mmvit.study.runner import run_study
from mmvit.storage.connection import storage_url

STUDY = Path(__file__).parent.parent / "search_spaces" / "known_answer.yaml"
LEARNED = 0.45
"""Test AP macro that S2+S1 must reach: the label prior gives about 0.2 on the demo."""


@pytest.mark.slow
@pytest.mark.real_profiles
@pytest.mark.parametrize("demo_seed", [0, 1, 2])
def test_quick_study_recovers_the_demo_archives_ranking(ray_session, tmp_path, demo_seed):
    from mmvit.data.demo import ensure_demo_archive

    archive = ensure_demo_archive(patches=600, seed=demo_seed)  # the default demo's size
    summary = run_study(STUDY, studies_dir=tmp_path / "studies", data=str(archive), profile="quick",
                        reports_dir=tmp_path / "reports")
    assert summary.failed == [] and summary.left == 0

    record = load_study_record("known_answer", storage_url("known_answer", tmp_path / "studies"))
    results = arm_results(record)
    assert {name: result.n for name, result in results.items()} == {"S1": 3, "S2": 3, "S2+S1": 3}
    mean = {name: result.metrics["ap_macro"].mean for name, result in results.items()}
    print(f"demo seed {demo_seed}: test AP macro " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items())
          + f" · {summary.seconds:.0f} s")
    assert mean["S2+S1"] >= LEARNED, mean
    assert mean["S2+S1"] > mean["S2"] > mean["S1"], mean

    pairs = comparison_pairs(record)
    assert pairs == {"S1": "S2", "S2+S1": "S2"}
    tests = comparison_tests(results, pairs)["ap_macro"]
    for arm in ("S1", "S2+S1"):
        assert tests[arm].pairs == 3 and tests[arm].significant, (arm, tests[arm].describe())
    assert tests["S1"].mean_difference < 0 < tests["S2+S1"].mean_difference
