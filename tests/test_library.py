"""Every study file in search_spaces/ validates and runs end to end on the demo archive, and its
report has exactly the arms the file declares (issue 6 §3).

The default suite runs the files in the *smoke* profile (one epoch, first seed, two search
trials per arm) so it fits CI — all but those whose arms take code paths other files already
take (``SLOW_SMOKE``: they validate in the default suite, and run with `-m slow`); `pytest -m
slow` runs those in smoke and every file in the quick profile."""

from __future__ import annotations

import html
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mmvit.study.runner import run_study
from mmvit.study.spec import load_spec
from mmvit.storage.connection import open_storage, storage_url

FILES = sorted(Path(__file__).parent.parent.joinpath("search_spaces").glob("*.yaml"))


def test_the_library_has_one_file_per_thesis_table():
    names = {path.stem for path in FILES}
    assert {"modality_baselines", "fusion_methods", "rgb_sar", "patch_size", "depth", "stochastic_depth",
            "augmentation", "speckle", "s1_normalisation", "embed_dim", "middle_depth", "dropout",
            "stability", "tuned_fusion"} <= names
    for path in FILES:
        spec = load_spec(path)
        assert spec.study == path.stem and spec.description
        if spec.reference:
            assert set(spec.reference.arms) <= {arm.name for arm in spec.arms}
            assert "Table" in spec.reference.citation


def test_study_files_pair_three_seeds_state_their_choices_and_leave_resources_to_run():
    for path in FILES:
        spec = load_spec(path, check_models=False)
        assert (spec.resources.cpu, spec.resources.gpu) == (None, None), f"{path.name} pins resources"
        assert len(spec.seeds) >= 3, f"{path.name}: a paired test needs three seeds"
        header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
        header = " ".join(header.replace("#", " ").split())
        for choice in ("augment.crop_scale", "flips = one of the 8 rotations/reflections", "modality drop",
                       "train.precision: auto", "best epoch = best validation"):
            assert choice in header.replace("modality-drop", "modality drop"), (path.name, choice)
        for arm in spec.arms:  # the thesis's dropout is standard and attention dropout together (§7.4)
            model = spec.resolve(arm, spec.seeds[0]).model
            rates = [(model.drop_rate, model.attn_drop_rate)] + [
                (rates.get("drop_rate", model.drop_rate), rates.get("attn_drop_rate", model.attn_drop_rate))
                for rates in model.overrides.values()]
            assert all(drop == attn for drop, attn in rates), (path.name, arm.name, rates)


def _run_and_check(path: Path, tmp_path: Path, demo_root: Path, profile: str) -> None:
    spec = load_spec(path)
    summary = run_study(path, studies_dir=tmp_path / "studies", data=str(demo_root), profile=profile,
                        reports_dir=tmp_path / "reports")
    assert summary.failed == [] and summary.unsearched_arms == ()
    study = optuna.load_study(study_name=spec.study, storage=open_storage(storage_url(spec.study, tmp_path / "studies")))
    complete = {t.user_attrs["arm"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert complete == {arm.name for arm in spec.arms}
    page = html.unescape(summary.report.read_text())
    for arm in spec.arms:
        assert arm.name in page, arm.name
    aggregate = (summary.report.parent / "tables").glob("*.csv")
    assert any(arm.name in p.read_text() for p in aggregate for arm in spec.arms)
    if spec.reference:
        assert "Published reference" in page


# Smoke-run in the slow suite to keep the default under 10 min, because other files take their
# code paths: arms that differ only in a scalar model setting (depth, width, rates) take
# patch_size's; known_answer's arms are modality_baselines' and early fusion's (its own slow test
# runs it whole); tuned_fusion (35 s) is fusion_methods' six models through the per-arm search
# that tests/test_runner.py's ASHA test runs.
SLOW_SMOKE = {"depth", "embed_dim", "dropout", "stochastic_depth", "stability", "known_answer", "tuned_fusion"}
SMOKE = [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW_SMOKE else p for p in FILES]


@pytest.mark.parametrize("path", SMOKE, ids=[p.stem for p in FILES])
def test_study_file_runs_end_to_end_in_the_smoke_profile(ray_session, tmp_path, demo_root, path):
    _run_and_check(path, tmp_path, demo_root, "smoke")


@pytest.mark.slow
@pytest.mark.real_profiles
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_study_file_runs_end_to_end_in_the_quick_profile(ray_session, tmp_path, demo_root, path):
    _run_and_check(path, tmp_path, demo_root, "quick")


def test_quick_profile_keeps_three_paired_seeds_and_more_where_they_fit():
    from mmvit.study.trial import QUICK_FINAL_TRIALS, QUICK_MIN_SEEDS, profile_plan

    kept = {}
    for path in FILES:
        spec = load_spec(path, check_models=False)
        seeds, _ = profile_plan(spec, "quick")
        assert seeds == spec.seeds[:len(seeds)], path.name
        assert len(seeds) >= min(QUICK_MIN_SEEDS, len(spec.seeds)), f"{path.name}: a quick report without a paired test"
        assert len(seeds) * len(spec.arms) <= QUICK_FINAL_TRIALS or len(seeds) == QUICK_MIN_SEEDS, path.name
        assert len(seeds) == len(spec.seeds) or (len(seeds) + 1) * len(spec.arms) > QUICK_FINAL_TRIALS, path.name
        assert profile_plan(spec, "full")[0] == spec.seeds
        kept[path.stem] = len(seeds)
    assert kept["known_answer"] == 3 and kept["modality_baselines"] == 3 and kept["depth"] == 3
