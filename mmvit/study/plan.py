"""What a study runs: arms (the ablation grid) × seeds, plus per-arm search trials."""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def total_trials(self) -> int:
        return sum(a.search_trials + a.seed_trials for a in self.arms)

    @property
    def gpu_hours(self) -> float | None:
        flops = [a.train_flops for a in self.arms]
        if any(f is None for f in flops):
            return None
        return sum(flops) / (REFERENCE_TFLOPS * 1e12) / 3600


def plan_study(spec: StudySpec, train_patches: int | None = None) -> StudyPlan:
    """Resolve every arm; parameters and tokens from a model built on the meta device."""
    from mmvit.study.shapes import model_shape

    plans = []
    for arm in spec.arms:
        config = spec.resolve(arm, spec.seeds[0])
        shape = model_shape(config)
        plans.append(ArmPlan(
            name=arm.name, arm=arm, parameters=shape.parameters,
            tokens=shape.tokens, epochs=config.train.epochs, train_patches=train_patches,
            search_trials=spec.search.trials_per_arm if spec.search else 0, seed_trials=len(spec.seeds),
        ))
    return StudyPlan(spec, plans)
