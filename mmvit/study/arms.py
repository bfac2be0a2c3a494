"""Arms: the points of a study's ablation, and the trial configuration of each (arm, seed).

``ablate:`` is either a product of axes or an explicit list of arms. In the product form an
axis is a configuration key with a list of values (``model.depth: [2, 4]``) or a *named*
axis whose labels each set several keys (``augmentation: {all: {augment.synchronised: false,
augment.modality_drop: 0.5}}``). The list form holds paired settings that are not a product
(thesis Table A.7: modality and fusion depth summing to 8), each with an optional ``name``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from mmvit.config import TrialConfig, set_dotted, trial_config


@dataclass(frozen=True)
class Arm:
    """One ablation point: ``labels`` (axis → label) name it in tables; ``settings`` (dotted
    key → value) are what it changes in ``base``."""

    name: str
    labels: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def _label_name(labels: dict[str, Any]) -> str:
    return ", ".join(f"{axis}={value}" for axis, value in labels.items()) or "base"


def arms_from_ablate(ablate: dict[str, Any] | list[dict[str, Any]]) -> list[Arm]:
    """Every arm of an ``ablate:`` section, in file order (one ``base`` arm when it is empty)."""
    if isinstance(ablate, list):
        arms = []
        for item in ablate:
            settings = {k: v for k, v in item.items() if k != "name"}
            arms.append(Arm(str(item.get("name") or _label_name(settings)), dict(settings), settings))
        return arms
    axes = []
    for axis, values in ablate.items():
        if isinstance(values, dict):  # named axis: label → settings
            axes.append([(axis, label, dict(settings)) for label, settings in values.items()])
        else:
            axes.append([(axis, value, {axis: value}) for value in values])
    arms = []
    for combination in itertools.product(*axes):
        labels = {axis: label for axis, label, _ in combination}
        settings: dict[str, Any] = {}
        for _, _, part in combination:
            settings.update(part)
        arms.append(Arm(_label_name(labels), labels, settings))
    return arms


def ablated_keys(ablate: dict[str, Any] | list[dict[str, Any]]) -> set[str]:
    """Configuration keys any arm sets — what a profile must never change."""
    return {key for arm in arms_from_ablate(ablate) for key in arm.settings}


# ---------------------------------------------------------------------------- comparisons

@dataclass(frozen=True)
class Comparison:
    """What one arm's Δ and paired test are taken against: the arm ``compare_with`` (None: this
    arm is the study's reference), which differs from it in ``axis`` only (None for an arm list)."""

    compare_with: str | None
    axis: str | None = None


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def reference_levels(ablate: dict[str, Any], baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each axis's reference level (a value, or a named axis's label): ``baseline:``'s, else the first listed."""
    chosen = baseline or {}
    return {axis: chosen[axis] if axis in chosen else next(iter(values)) for axis, values in ablate.items()}


def comparisons(ablate: dict[str, Any] | list[dict[str, Any]], baseline: Any = None, *,
                default: str | None = None) -> dict[str, Comparison]:
    """arm name → :class:`Comparison`, in arm order. A Δ must never mix two axes, so in a product
    each arm is compared with the arm that differs from it in one axis only, at that axis's
    reference level; the axis is the innermost (last listed) one the arm is off its reference on,
    so arms are compared within each group of the outer axes and each group's reference arm along
    the next outer axis. An arm list compares every arm with one baseline arm: ``baseline``, else
    ``default`` (the caller's arm equal to ``base``), else the first arm."""
    arms = arms_from_ablate(ablate)
    if isinstance(ablate, list):
        reference = str(baseline) if baseline is not None else default or arms[0].name
        return {arm.name: Comparison(None if arm.name == reference else reference) for arm in arms}
    levels = reference_levels(ablate, baseline)
    out = {}
    for arm in arms:
        off = [axis for axis in ablate if not _same(arm.labels[axis], levels[axis])]
        if not off:
            out[arm.name] = Comparison(None)
            continue
        target = {**arm.labels, off[-1]: levels[off[-1]]}
        other = next(a for a in arms if all(_same(a.labels[k], v) for k, v in target.items()))
        out[arm.name] = Comparison(other.name, off[-1])
    return out


def resolve(base: dict[str, Any], arm: Arm, seed: int, *, metric: str,
            profile: dict[str, Any] | None = None, params: dict[str, Any] | None = None) -> TrialConfig:
    """The full configuration of ``arm`` at ``seed``: thesis defaults < ``base`` < ``profile``
    (budgets only; the caller leaves out ablated and searched keys) < the arm's settings <
    searched ``params``."""
    raw = json.loads(json.dumps(base))
    for key, value in {**(profile or {}), **arm.settings, **(params or {})}.items():
        set_dotted(raw, key, value)
    raw["seed"] = seed
    set_dotted(raw, "train.metric", metric)
    return trial_config(raw, source=f"arm {arm.name}")
