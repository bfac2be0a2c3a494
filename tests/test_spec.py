"""Study files: a valid plan, and a corpus of bad files each refused with its own message."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mmvit.cli import app
from mmvit.study.plan import plan_study
from mmvit.study.spec import load_spec, parse_spec

runner = CliRunner()

GOOD = """\
study: fusion-depth
description: two axes and a search
base:
  model: {embed_dim: 128, num_heads: 4}
ablate:
  model.fusion: [early, sct]
  model.depth: [2, 4]
seeds: [0, 1, 2]
search:
  sampler: tpe
  trials_per_arm: 5
  params:
    train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.drop_rate: {type: categorical, choices: [0.0, 0.1]}
  asha: {grace_period: 2, reduction_factor: 3}
metric: hamming_loss
resources: {cpu: 2, gpu: 0.5}
"""


def test_good_spec_plan():
    spec = parse_spec(GOOD, "good.yaml")
    plan = plan_study(spec, train_patches=1000)
    assert [a.name for a in plan.arms] == [
        "model.fusion=early, model.depth=2", "model.fusion=early, model.depth=4",
        "model.fusion=sct, model.depth=2", "model.fusion=sct, model.depth=4"]
    assert plan.total_trials == 4 * (5 + 3)
    assert spec.direction == "minimize"
    config = spec.resolve(plan.arms[3].arm, seed=2)
    assert (config.model.fusion, config.model.depth, config.model.embed_dim, config.seed) == ("sct", 4, 128, 2)
    assert config.train.metric == "hamming_loss"
    assert plan.arms[2].parameters > plan.arms[0].parameters  # sct has two encoders


def test_digest_changes_with_content():
    assert parse_spec(GOOD).digest() == parse_spec(GOOD).digest()
    assert parse_spec(GOOD).digest() != parse_spec(GOOD.replace("[0, 1, 2]", "[0, 1]")).digest()


def test_baseline_is_a_reporting_choice_not_identity():
    spec = parse_spec(GOOD + "baseline: {model.depth: 4, model.fusion: sct}\n", check_models=False)
    assert spec.baseline == {"model.depth": 4, "model.fusion": "sct"}
    assert spec.digest() == parse_spec(GOOD, check_models=False).digest()
    listed = "study: x\nablate:\n  - {name: '1+7', model.depth: 2}\n  - {name: '4+4', model.depth: 4}\nbaseline: '4+4'\n"
    assert parse_spec(listed, check_models=False).baseline == "4+4"


NAMED_AND_LISTED = """\
study: forms
base:
  model: {fusion: early}
ablate:
  model.fusion: [early, sct]
  augmentation:
    standard: {augment.synchronised: true, augment.modality_drop: 0.0}
    all: {augment.synchronised: false, augment.modality_drop: 0.5}
reference:
  citation: a thesis
  arms:
    "model.fusion=sct, augmentation=all": {ap_macro: 0.7, hamming_loss: 0.05}
"""


def test_named_axis_arms_carry_labels_and_settings():
    spec = parse_spec(NAMED_AND_LISTED)
    assert [a.name for a in spec.arms] == [
        "model.fusion=early, augmentation=standard", "model.fusion=early, augmentation=all",
        "model.fusion=sct, augmentation=standard", "model.fusion=sct, augmentation=all"]
    last = spec.arms[3]
    assert last.labels == {"model.fusion": "sct", "augmentation": "all"}
    config = spec.resolve(last, seed=1)
    assert (config.model.fusion, config.augment.synchronised, config.augment.modality_drop) == ("sct", False, 0.5)
    assert spec.reference.arms["model.fusion=sct, augmentation=all"]["hamming_loss"] == 0.05


def test_list_of_arms_pairs_settings_instead_of_a_product():
    spec = parse_spec("study: m\nablate:\n  - {name: 1+7, model.fusion: middle, model.modality_depth: 1, "
                      "model.fusion_depth: 7}\n  - {model.fusion: middle, model.modality_depth: 6, "
                      "model.fusion_depth: 2}\n")
    assert [a.name for a in spec.arms] == [
        "1+7", "model.fusion=middle, model.modality_depth=6, model.fusion_depth=2"]
    depths = [(c.model.modality_depth, c.model.fusion_depth) for c in (spec.resolve(a, 0) for a in spec.arms)]
    assert depths == [(1, 7), (6, 2)]


def test_shipped_study_files_validate():
    from pathlib import Path

    files = sorted(Path(__file__).parent.parent.joinpath("search_spaces").glob("*.yaml"))
    assert files
    for path in files:
        assert load_spec(path).study == path.stem


BAD = [  # (file text, line, words the message must hold)
    ("study: x\nablate:\n  model.dept: [2, 4]\n", 3, ["'model.dept'", "did you mean 'model.depth'"]),
    ("study: x\nablate:\n  model.patch_size: [16]\n", 3, ["patch_size must divide", "got 16"]),
    ("study: x\nbase:\n  model: {embed_dim: 250}\n", 2, ["embed_dim", "num_heads", "250"]),
    ("study: x\nbase:\n  data: {modalities: s2}\n", 2, ["needs two modalities"]),
    ("study: x\nsearch:\n  params:\n    train.lr: {type: float, low: 5, high: 2}\n", 4, ["`low <= high` must hold", "low=5.0, high=2.0"]),
    ("study: x\nsearch:\n  params:\n    train.lr: {type: float, low: 0, high: 1, log: true}\n", 4, ["log-scaled", "low > 0"]),
    ("study: x\nsearch:\n  params:\n    model.drop_rate: {type: categorical, choices: []}\n", 4, ["non-empty `choices`"]),
    ("study: x\nsearch:\n  params:\n    train.lr: {type: float}\n", 4, ["needs `low` and `high`"]),
    ("study: x\nsearch:\n  sampler: bayes\n  params: {}\n", 3, ["search.sampler", "'tpe'", "'bayes'"]),
    ("study: x\nsearch:\n  params:\n    train.lr: {type: float, low: 1, high: 2}\n  asha: {grace_period: 9, max_t: 3}\n", 5, ["grace_period <= max_t"]),
    ("study: x\nablate:\n  train.lr: [0.1]\nsearch:\n  params:\n    train.lr: {type: float, low: 0.1, high: 1}\n", 6, ["both ablated and searched"]),
    ("study: x\nmetric: ap_marco\n", 2, ["did you mean 'ap_macro'"]),
    ("study: x\nseeds: [1, 1]\n", 2, ["distinct integers"]),
    ("study: x\nseeds: []\n", 2, ["non-empty list"]),
    ("study: x\nablate:\n  model.depth: []\n", 3, ["needs at least one value"]),
    ("study: x\nablate:\n  model.depth: [2, 2]\n", 3, ["repeats a value"]),
    ("study: 'my study/1'\n", 1, ["names a folder"]),
    ("study: x\nresources: {cpu: 0}\n", 2, ["resources.cpu", "greater than 0"]),
    ("study: x\nresources: {gpu: -1}\n", 2, ["resources.gpu"]),
    ("study: x\nseeds: [0, 1]\nsearch:\n  seed: 1\n  params:\n    train.lr: {type: float, low: 0.1, high: 1}\n", 4,
     ["search.seed must not be one of `seeds`", "search.seed=1 with seeds [0, 1]"]),
    ("study: x\nmax_concurrent: 0\n", 2, ["max_concurrent"]),
    ("study: x\nseed: [0]\n", 2, ["seed is not a known key", "did you mean 'seeds'"]),
    ("study: x\nbase:\n  model: {depht: 4}\n", 3, ["model.depht is not a known key", "did you mean 'depth'"]),
    ("study: x\nbase:\n  train: {epochs: -3}\n", 3, ["train.epochs", "greater than 0"]),
    ("study: x\nbase:\n  data: {speckle_filter: median4}\n", 3, ["odd k in 3..15", "median4"]),
    ("study: x\nablate:\n  model.fusion: [sct, latefusion]\n", 3, ["model must be one of", "latefusion"]),
    ("study: x\nablate:\n  model.fusion: [sct]\n  model.modality_depth: [2, 4]\n", 4,
     ["model.modality_depth is not a setting of model 'sct'", "which takes patch_size, depth"]),
    # A base setting the model does not take was dropped when the model was built (a 6 + 2 model trained).
    ("study: x\nbase:\n  model:\n    fusion: middle\n    depth: 4\n", 5,
     ["model.depth is not a setting of model 'middle'", "modality_depth, fusion_depth", "remove model.depth"]),
    ("study: x\nbase:\n  model: {depth: 4}\nablate:\n  model.fusion: [early, middle]\n", 3,
     ["arm model.fusion=middle", "model.depth is not a setting of model 'middle'"]),
    ("study: x\nablate: [1, 2\n", 3, ["not valid YAML"]),
    ("- just\n- a list\n", None, ["must be a mapping"]),
    ("description: no name\n", None, ["study", "Field required"]),
    ("study: x\nsearch:\n  sampler: grid\n  params:\n    train.lr: {type: float, low: 0.1, high: 1}\n", 3,
     ["grid sampler needs categorical", "train.lr is a range"]),
    ("study: x\nsearch:\n  sampler: grid\n  trials_per_arm: 5\n  params:\n    train.lr: {type: categorical, choices: [0.1, 0.2]}\n",
     4, ["exceeds the grid's 2 point(s)", "trials_per_arm: 2"]),
    ("study: x\nablate:\n  - {model.depth: 2}\n  - {model.dept: 4}\n", 4, ["'model.dept'", "did you mean 'model.depth'"]),
    ("study: x\nablate:\n  - {name: a, model.depth: 2}\n  - {name: a, model.depth: 4}\n", 2, ["arm names must be unique", "a repeat"]),
    ("study: x\nablate:\n  - {name: a}\n", 3, ["arm 1 sets nothing"]),
    ("study: x\nablate:\n  - {model.depth: 2}\n  - {model.patch_size: 16}\n", 4, ["patch_size must divide"]),
    ("study: x\nablate:\n  augmentation:\n    all: {augment.synchronised: false}\n    none: {augment.flip: maybe}\n", 5,
     ["augment.flip"]),
    ("study: x\nablate:\n  augmentation:\n    all: {augment.modality_dorp: 0.5}\n", 4, ["did you mean 'augment.modality_drop'"]),
    ("study: x\nablate:\n  model.depth:\n    deep: {model.depth: 12}\n", 3, ["is a configuration key", "name the axis differently"]),
    ("study: x\nablate:\n  model.depth: [2, 4]\nreference:\n  citation: thesis\n  arms:\n    model.depth=3: {ap_macro: 0.5}\n",
     7, ["'model.depth=3', which is not an arm", "did you mean 'model.depth=4'"]),
    ("study: x\nablate:\n  model.depth: [2]\nreference:\n  citation: thesis\n  arms:\n    model.depth=2: {ap_macro: 65.3}\n",
     6, ["not a fraction", "0.653"]),
    ("study: x\nablate:\n  model.depth: [2]\nreference:\n  citation: thesis\n  arms:\n    model.depth=2: {ap_macr: 0.6}\n",
     6, ["did you mean 'ap_macro'"]),
    ("study: x\nablate:\n  model.depth: [2, 4]\nbaseline: {model.dept: 4}\n", 4,
     ["baseline names the axis 'model.dept'", "did you mean 'model.depth'"]),
    ("study: x\nablate:\n  model.depth: [2, 4]\nbaseline:\n  model.depth: 6\n", 5,
     ["model.depth = 6 is not one of that axis's values (2, 4)"]),
    ("study: x\nablate:\n  augmentation:\n    all: {augment.synchronised: false}\n    none: {augment.flip: true}\n"
     "baseline: {augmentation: some}\n", 6, ["augmentation = 'some' is not one of that axis's labels ('all', 'none')"]),
    ("study: x\nablate:\n  model.depth: [2, 4]\nbaseline: model.depth=4\n", 4,
     ["for a product of axes, give each axis's reference level as a mapping", "baseline: {model.depth: …}"]),
    ("study: x\nablate:\n  - {name: a, model.depth: 2}\n  - {name: b, model.depth: 4}\nbaseline: {model.depth: 2}\n", 5,
     ["the arms are an explicit list, so name one arm", "baseline: 'a'"]),
    ("study: x\nablate:\n  - {name: a, model.depth: 2}\n  - {name: b, model.depth: 4}\nbaseline: c\n", 5,
     ["baseline names the arm 'c', which is not an arm of this study", "the arms are: a; b"]),
]


@pytest.mark.parametrize("text, line, words", BAD, ids=[f"bad{i:02d}" for i in range(len(BAD))])
def test_bad_spec_is_refused_with_its_message(tmp_path, text, line, words):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert "Traceback" not in output
    prefix = f"{path}:{line}:" if line else str(path)
    assert prefix in output, output
    for word in words:
        assert word in output, (word, output)


def test_validate_prints_the_plan(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = runner.invoke(app, ["validate", str(path), "--train-patches", "1000", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "4 arm(s) × 3 seed(s)" in result.output and "= 32 trial(s) (full profile)" in result.output
    assert "search trial(s) per arm on seed 10000" in result.output
    assert "GPU-hours" in result.output and "minimize" in result.output
    assert "no paired test" not in result.output


def test_validate_plans_what_run_runs_in_the_profile_and_warns_below_three_seeds(tmp_path):
    from mmvit.study.trial import SMOKE_SEARCH_TRIALS

    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    smoke = runner.invoke(app, ["validate", str(path), "--profile", "smoke"])
    assert smoke.exit_code == 0, smoke.output
    assert f"4 arm(s) × 1 seed(s) [0] + {SMOKE_SEARCH_TRIALS} tpe search trial(s)" in smoke.output
    assert f"= {4 * (1 + SMOKE_SEARCH_TRIALS)} trial(s) (smoke profile)" in smoke.output
    assert "128 training patches" in smoke.output, "the smoke profile's training subset"
    path.write_text(GOOD.replace("seeds: [0, 1, 2]", "seeds: [0, 1]"))
    two = runner.invoke(app, ["validate", str(path)])
    assert two.exit_code == 0, two.output
    assert "Warning: 2 seed(s): fewer than three paired seeds, so no paired test will run" in " ".join(two.output.split())


def test_validate_plans_the_profile_run_chooses(tmp_path, monkeypatch):
    from mmvit.study.plan import plan_study
    from mmvit.study.trial import QUICK_FINAL_TRIALS

    monkeypatch.delenv("MMVIT_DATA", raising=False)
    path = tmp_path / "good.yaml"
    path.write_text(GOOD.replace("seeds: [0, 1, 2]", "seeds: [0, 1, 2, 3, 4, 5]"))
    quick = plan_study(load_spec(path), profile="quick")
    assert len(quick.seeds) == QUICK_FINAL_TRIALS // 4 < 6, "the quick profile keeps fewer seeds than the file"
    demo = runner.invoke(app, ["validate", str(path)])
    assert demo.exit_code == 0, demo.output
    text = " ".join(demo.output.split())
    assert "`run` trains on the demo archive in the quick profile" in text
    assert f"4 arm(s) × {len(quick.seeds)} seed(s) {quick.seeds}" in text and "(quick profile)" in text
    for chosen in (["--data", str(tmp_path)], ["--profile", "full"]):
        full = runner.invoke(app, ["validate", str(path), *chosen])
        assert "4 arm(s) × 6 seed(s)" in full.output and "(full profile)" in full.output, (chosen, full.output)
        assert "demo archive" not in full.output
    monkeypatch.setenv("MMVIT_DATA", str(tmp_path))
    assert "(full profile)" in runner.invoke(app, ["validate", str(path)]).output, "as run: $MMVIT_DATA is an archive"
    bad = runner.invoke(app, ["validate", str(path), "--profile", "fast"])
    assert bad.exit_code == 1 and "--profile must be one of full, quick, smoke, but got 'fast'" in bad.output


def test_the_search_seed_is_never_a_final_seed():
    assert parse_spec(GOOD).search_seed == 10_000
    assert parse_spec(GOOD.replace("seeds: [0, 1, 2]", "seeds: [3, 10000]")).search_seed == 10_001
    assert parse_spec(GOOD.replace("  sampler: tpe\n", "  sampler: tpe\n  seed: 7\n")).search_seed == 7


def test_the_readme_example_study_file_is_valid():
    from pathlib import Path

    readme = Path(__file__).parent.parent.joinpath("README.md").read_text()
    text = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = parse_spec(text, "README.md")
    assert len(spec.arms) == 4 and spec.search.sampler == "tpe"
    assert spec.reference.arms.keys() <= {a.name for a in spec.arms}
