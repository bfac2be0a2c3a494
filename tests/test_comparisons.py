"""What each arm's Δ is against (mmvit.study.arms.comparisons), by hand for 1-, 2- and 3-axis
products with and without ``baseline:``, arm lists, and what the runner records."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from mmvit.study.arms import arms_from_ablate, comparisons
from mmvit.study.spec import parse_spec

AUGMENTATION = {"standard": {"augment.synchronised": True}, "desynchronised": {"augment.synchronised": False},
                "modality_drop": {"augment.modality_drop": 0.5}, "all": {"augment.modality_drop": 0.5}}


def pairs(ablate, baseline=None, **kwargs) -> dict[str, tuple[str | None, str | None]]:
    return {name: (c.compare_with, c.axis) for name, c in comparisons(ablate, baseline, **kwargs).items()}


def test_one_axis_compares_every_arm_with_the_reference_level():
    ablate = {"model.depth": [2, 4, 8]}
    assert pairs(ablate) == {"model.depth=2": (None, None), "model.depth=4": ("model.depth=2", "model.depth"),
                             "model.depth=8": ("model.depth=2", "model.depth")}
    assert pairs(ablate, {"model.depth": 8}) == {"model.depth=2": ("model.depth=8", "model.depth"),
                                                 "model.depth=4": ("model.depth=8", "model.depth"),
                                                 "model.depth=8": (None, None)}


def test_augmentation_study_compares_within_each_fusion_group():
    """search_spaces/augmentation.yaml: early arms vs. early/standard, sct arms vs. sct/standard,
    and sct/standard vs. early/standard — never an early arm against an sct arm."""
    name = "model.fusion={}, augmentation={}".format
    got = pairs({"model.fusion": ["early", "sct"], "augmentation": AUGMENTATION})
    assert got == {
        name("early", "standard"): (None, None),
        name("early", "desynchronised"): (name("early", "standard"), "augmentation"),
        name("early", "modality_drop"): (name("early", "standard"), "augmentation"),
        name("early", "all"): (name("early", "standard"), "augmentation"),
        name("sct", "standard"): (name("early", "standard"), "model.fusion"),
        name("sct", "desynchronised"): (name("sct", "standard"), "augmentation"),
        name("sct", "modality_drop"): (name("sct", "standard"), "augmentation"),
        name("sct", "all"): (name("sct", "standard"), "augmentation"),
    }


def test_two_axes_with_a_baseline_for_one_axis():
    name = "model.fusion={}, model.depth={}".format
    got = pairs({"model.fusion": ["early", "sct"], "model.depth": [2, 4, 8]}, {"model.depth": 8})
    assert got == {
        name("early", 2): (name("early", 8), "model.depth"), name("early", 4): (name("early", 8), "model.depth"),
        name("early", 8): (None, None),
        name("sct", 2): (name("sct", 8), "model.depth"), name("sct", 4): (name("sct", 8), "model.depth"),
        name("sct", 8): (name("early", 8), "model.fusion"),
    }


def test_three_axes_without_and_with_a_baseline():
    ablate = {"a": [1, 2], "b": ["x", "y"], "c": ["p", "q"]}
    name = "a={}, b={}, c={}".format
    assert pairs(ablate) == {
        name(1, "x", "p"): (None, None),
        name(1, "x", "q"): (name(1, "x", "p"), "c"),
        name(1, "y", "p"): (name(1, "x", "p"), "b"),
        name(1, "y", "q"): (name(1, "y", "p"), "c"),
        name(2, "x", "p"): (name(1, "x", "p"), "a"),
        name(2, "x", "q"): (name(2, "x", "p"), "c"),
        name(2, "y", "p"): (name(2, "x", "p"), "b"),
        name(2, "y", "q"): (name(2, "y", "p"), "c"),
    }
    assert pairs(ablate, {"b": "y"}) == {
        name(1, "x", "p"): (name(1, "y", "p"), "b"),
        name(1, "x", "q"): (name(1, "x", "p"), "c"),
        name(1, "y", "p"): (None, None),
        name(1, "y", "q"): (name(1, "y", "p"), "c"),
        name(2, "x", "p"): (name(2, "y", "p"), "b"),
        name(2, "x", "q"): (name(2, "x", "p"), "c"),
        name(2, "y", "p"): (name(1, "y", "p"), "a"),
        name(2, "y", "q"): (name(2, "y", "p"), "c"),
    }


@pytest.mark.parametrize("baseline", [None, {"b": "z"}, {"a": 3, "c": "p"}])
def test_every_comparison_differs_in_one_axis_at_its_reference_and_leads_to_the_reference(baseline):
    ablate = {"a": [1, 2, 3], "b": ["x", "y", "z"], "c": ["p", "q"]}
    arms = {arm.name: arm for arm in arms_from_ablate(ablate)}
    levels = {"a": 1, "b": "x", "c": "p", **(baseline or {})}
    compared = comparisons(ablate, baseline)
    for name, comparison in compared.items():
        if comparison.compare_with is None:
            assert arms[name].labels == levels
            continue
        mine, theirs = arms[name].labels, arms[comparison.compare_with].labels
        assert [axis for axis in ablate if mine[axis] != theirs[axis]] == [comparison.axis]
        assert theirs[comparison.axis] == levels[comparison.axis]
        inner = list(ablate)[list(ablate).index(comparison.axis) + 1:]
        assert all(mine[axis] == levels[axis] for axis in inner), "the innermost axis off its reference"
        seen, step = {name}, comparison.compare_with
        while step is not None:  # every chain ends at the reference, without a cycle
            assert step not in seen
            seen.add(step)
            step = compared[step].compare_with


def test_an_arm_list_compares_with_one_baseline_arm():
    ablate = [{"name": "1+7", "model.modality_depth": 1}, {"name": "4+4", "model.modality_depth": 4},
              {"name": "6+2", "model.modality_depth": 6}]
    assert pairs(ablate) == {"1+7": (None, None), "4+4": ("1+7", None), "6+2": ("1+7", None)}
    assert pairs(ablate, default="4+4") == {"1+7": ("4+4", None), "4+4": (None, None), "6+2": ("4+4", None)}
    assert pairs(ablate, "6+2", default="4+4") == {"1+7": ("6+2", None), "4+4": ("6+2", None), "6+2": (None, None)}
    assert pairs({}) == {"base": (None, None)}


def _record(text: str) -> list[dict]:
    from mmvit.study.runner import record_identity

    spec = parse_spec(text, "study.yaml", check_models=False)
    study = optuna.create_study()
    record_identity(study, SimpleNamespace(spec=spec, arms=spec.arms, profile="full"))
    return study.user_attrs["arms"]


def test_the_runner_records_each_arms_comparison():
    arms = _record("study: x\nablate:\n  model.fusion: [early, sct]\n  model.depth: [2, 4]\n"
                   "baseline: {model.depth: 4}\n")
    assert [(a["name"], a["baseline"], a["compare_with"], a["axis"]) for a in arms] == [
        ("model.fusion=early, model.depth=2", False, "model.fusion=early, model.depth=4", "model.depth"),
        ("model.fusion=early, model.depth=4", True, None, None),
        ("model.fusion=sct, model.depth=2", False, "model.fusion=sct, model.depth=4", "model.depth"),
        ("model.fusion=sct, model.depth=4", False, "model.fusion=early, model.depth=4", "model.fusion")]
    listed = _record("study: x\nbase:\n  model: {fusion: sct}\nablate:\n  - {name: e, model.fusion: early}\n"
                     "  - {name: s, model.fusion: sct}\n")
    assert [(a["name"], a["baseline"], a["compare_with"]) for a in listed] == [("e", False, "s"), ("s", True, None)], \
        "an arm list's default baseline is the arm equal to base"
