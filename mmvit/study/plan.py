"""What a study runs: arms (the ablation grid) × seeds, plus per-arm search trials — in the profile
``run`` uses (the smoke profile cuts seeds and search trials, quick and smoke shrink the budgets)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mmvit.study.arms import Arm
from mmvit.study.spec import StudySpec

REFERENCE_TFLOPS = 50.0
"""Assumed effective training throughput of one GPU for the rough cost estimate (bf16)."""


@dataclass
class ArmPlan:
    name: str
    arm: Arm
    parameters: int
    tokens: int
    epochs: int
    train_patches: int | None
    search_trials: int
    seed_trials: int

    @property
    def train_flops(self) -> float | None:
        """6 · parameters · tokens per sample-pass (forward + backward), summed over trials."""
        if self.train_patches is None:
            return None
        passes = self.train_patches * self.epochs * (self.search_trials + self.seed_trials)
        return 6.0 * self.parameters * self.tokens * passes


@dataclass
class StudyPlan:
    spec: StudySpec
    arms: list[ArmPlan]
    seeds: list[int] = field(default_factory=list)
    """The final seeds the profile runs."""
    search_trials: int = 0
    """Search trials per arm the profile runs."""
    profile: str = "full"

    @property
    def total_trials(self) -> int:
        return sum(a.search_trials + a.seed_trials for a in self.arms)

    @property
    def gpu_hours(self) -> float | None:
        flops = [a.train_flops for a in self.arms]
        if any(f is None for f in flops):
            return None
        return sum(flops) / (REFERENCE_TFLOPS * 1e12) / 3600


def data_source(spec: StudySpec, data: str | None = None) -> str | None:
    """The archive ``run`` trains on: ``--data`` > ``$MMVIT_DATA`` > ``data.root`` of the study file;
    None means the demo archive."""
    return data or os.environ.get("MMVIT_DATA") or spec.base.get("data", {}).get("root")


def choose_profile(spec: StudySpec, profile: str | None = None, data: str | None = None) -> str:
    """The profile ``run`` uses, so that ``validate`` plans the same run: the one asked for, else
    ``full`` on a real archive and ``quick`` on the demo archive."""
    from mmvit.errors import SpecError
    from mmvit.study.trial import PROFILES

    if profile is not None and profile not in PROFILES:
        raise SpecError(f"--profile must be one of {', '.join(PROFILES)}, but got {profile!r}.")
    return profile or ("full" if data_source(spec, data) else "quick")


def plan_study(spec: StudySpec, train_patches: int | None = None, *, profile: str = "full") -> StudyPlan:
    """Resolve every arm as ``run`` does in ``profile`` (:func:`mmvit.study.trial.profile_plan`);
    parameters and tokens from a model built on the meta device."""
    from mmvit.study.shapes import model_shape
    from mmvit.study.trial import profile_overrides, profile_plan

    seeds, search_trials = profile_plan(spec, profile)
    overrides = profile_overrides(spec, profile)
    plans = []
    for arm in spec.arms:
        config = spec.resolve(arm, seeds[0], profile=overrides)
        shape = model_shape(config)
        patches = train_patches
        if patches is not None and config.data.max_train_patches is not None:
            patches = min(patches, config.data.max_train_patches)
        plans.append(ArmPlan(
            name=arm.name, arm=arm, parameters=shape.parameters,
            tokens=shape.tokens, epochs=config.train.epochs, train_patches=patches,
            search_trials=search_trials, seed_trials=len(seeds),
        ))
    return StudyPlan(spec, plans, list(seeds), search_trials, profile)
