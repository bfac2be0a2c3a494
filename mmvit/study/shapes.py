"""A configuration's model built on the meta device (no memory, no compute): it checks the shape
rules and gives the parameter and token counts that cost estimates and trial ordering need.

Validation, ``validate``'s cost plan and the runner's longest-first order all ask for the same
arms; one cached build per distinct model serves the three (a 12-arm study built its models
three times, about 1 s each round on 2 cores).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from mmvit.config import TrialConfig


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    tokens: int


def model_shape(config: TrialConfig) -> ModelShape:
    """Build ``config``'s model on the meta device (raising what the model raises)."""
    return _build(json.dumps(config.model.model_dump(mode="json"), sort_keys=True), config.data.modalities)


@lru_cache(maxsize=4096)
def _build(model_json: str, modalities: str) -> ModelShape:
    import torch

    from mmvit.data.bands import input_channels
    from mmvit.train.loop import build_model

    config = TrialConfig.model_validate({"model": json.loads(model_json), "data": {"modalities": modalities}})
    with torch.device("meta"):
        model = build_model(config, input_channels(config.data.modalities))
    return ModelShape(sum(p.numel() for p in model.parameters()), int(model.num_tokens))
