"""Study files: YAML → a validated :class:`StudySpec`, with errors that name file, line and field.

A study file holds ``study`` (its name), ``description``, ``base`` (a partial trial
configuration; thesis defaults fill the rest), ``ablate`` (dotted keys → lists of values; every
combination is an arm), ``seeds`` (paired across arms), an optional ``search`` (parameters tuned
inside each arm), ``metric`` (validation metric, default ``ap_macro``), ``resources`` and
``max_concurrent``. Every arm is resolved to a full TrialConfig and its model is built on the
``meta`` device, so a patch size that does not divide 120 or a fusion model with one modality
is refused before anything runs.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmvit.config import TrialConfig, describe_validation_error, set_dotted, trial_config
from mmvit.errors import SpecError
from mmvit.train.metrics import HIGHER_IS_BETTER, check_metric


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchParam(_Strict):
    """One tuned parameter: a float/int range (optionally log) or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty `choices` list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs `low` and `high`")
        if not self.low <= self.high:
            raise ValueError(f"`low <= high` must hold, but got (low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled range needs `low > 0`, but got low={self.low}")
        return self


class Asha(_Strict):
    """ASHA inside an arm's search: stop weak trials at rungs grace_period·rfⁿ ≤ max_t epochs."""

    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="None = the trial's epochs")

    @model_validator(mode="after")
    def _check(self) -> Asha:
        if self.max_t is not None and self.grace_period > self.max_t:
            raise ValueError(f"`grace_period <= max_t` must hold, but got (grace_period={self.grace_period}, "
                             f"max_t={self.max_t})")
        return self


class Search(_Strict):
    sampler: Literal["tpe", "random", "grid", "cmaes", "nsga2"] = "tpe"
    trials_per_arm: int = Field(10, ge=1)
    params: dict[str, SearchParam]
    asha: Asha | None = Field(default_factory=Asha)


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class StudySpec(_Strict):
    study: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    ablate: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0])
    search: Search | None = None
    metric: str = "ap_macro"
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int | None = Field(None, ge=1)

    @field_validator("study")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", value):
            raise ValueError("must be 1–100 letters, digits, '_', '.' or '-' (it names a folder), "
                             f"but got {value!r}")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"must be a non-empty list of distinct integers, but got {value}")
        return value

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        return check_metric(value)

    @property
    def direction(self) -> str:
        return "maximize" if HIGHER_IS_BETTER[self.metric] else "minimize"

    def digest(self) -> str:
        """Hash of the resolved spec: a changed study file under the same name is detected."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- line numbers

def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Path of keys → 1-based line, for every mapping key and sequence item in the YAML."""
    index: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = path + (str(key.value),)
                index[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for position, item in enumerate(node.value):
                child = path + (str(position),)
                index[child] = item.start_mark.line + 1
                walk(item, child)

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return index


def _line_of(index: dict[tuple[str, ...], int], path: tuple) -> int | None:
    path = tuple(str(p) for p in path)
    while path:
        if path in index:
            return index[path]
        path = path[:-1]
    return None


class _Located(Exception):
    def __init__(self, path: tuple, message: str) -> None:
        super().__init__(message)
        self.path, self.message = path, message


# ---------------------------------------------------------------------------- loading

def _trial_keys() -> list[str]:
    """Every dotted key a study may ablate or search (``model.depth`` …)."""
    keys = []
    for section, field in TrialConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += [f"{section}.{name}" for name in annotation.model_fields]
        else:
            keys.append(section)
    return keys


def _check_dotted(key: str, where: tuple) -> None:
    known = _trial_keys()
    if key in known or key.startswith("model.overrides."):
        return
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys include {', '.join(known[:8])}, …"
    raise _Located(where, f"{key!r} is not a trial configuration key; {hint}")


def _check_arm(spec: StudySpec, config: TrialConfig, arm: dict[str, Any]) -> None:
    """Build the arm's model on the meta device: shape rules fail here, not after hours."""
    import torch

    from mmvit.data.bands import input_channels
    from mmvit.models import hyperparameters
    from mmvit.train.loop import build_model

    own = hyperparameters(config.model.fusion)
    for key in (*arm, *(spec.search.params if spec.search else ())):
        field = key.split(".", 1)[1] if key.startswith("model.") else None
        if field and field != "fusion" and field.split(".")[0] not in own:
            raise _Located(("ablate", key) if key in arm else ("search", "params", key),
                           f"{key} does not apply to model {config.model.fusion!r} (arm {arm_name(arm)}): "
                           f"it takes {', '.join(own)}. Remove the axis or the arm.")
    with torch.device("meta"):
        build_model(config, input_channels(config.data.modalities))


def arm_name(arm: dict[str, Any]) -> str:
    """``model.fusion=sct, model.depth=4`` (``base`` for the arm without axes)."""
    return ", ".join(f"{key}={value}" for key, value in arm.items()) or "base"


def resolve_arm(spec: StudySpec, arm: dict[str, Any], seed: int) -> TrialConfig:
    """The full trial configuration of one arm and seed."""
    raw = json.loads(json.dumps(spec.base))
    for key, value in arm.items():
        set_dotted(raw, key, value)
    raw["seed"] = seed
    raw.setdefault("train", {})["metric"] = spec.metric
    return trial_config(raw, source=f"arm {arm_name(arm)}")


def _validate(spec: StudySpec) -> None:
    for key, values in spec.ablate.items():
        _check_dotted(key, ("ablate", key))
        if not values:
            raise _Located(("ablate", key), f"axis {key!r} needs at least one value.")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise _Located(("ablate", key), f"axis {key!r} repeats a value: {values}.")
    if spec.search:
        for key in spec.search.params:
            _check_dotted(key, ("search", "params", key))
            if key in spec.ablate:
                raise _Located(("search", "params", key),
                               f"{key} is both ablated and searched; an axis is either a grid or a search.")
    try:
        TrialConfig.model_validate(spec.base)
    except ValidationError as error:
        first = error.errors()[0]
        raise _Located(("base", *first["loc"]),
                       "base: " + "; ".join(describe_validation_error(error, TrialConfig))) from None
    from mmvit.study.plan import arms_of

    for arm in arms_of(spec):
        where = ("ablate", next(iter(arm))) if arm else ("base",)
        try:
            config = resolve_arm(spec, arm, spec.seeds[0])
        except SpecError as error:
            raise _Located(where, str(error)) from None
        try:
            _check_arm(spec, config, arm)
        except SpecError as error:
            raise _Located(where, f"arm {arm_name(arm)}: {error}") from None


def parse_spec(text: str, source: str = "<string>") -> StudySpec:
    """Validate study YAML; a SpecError names ``source:line``, the field and the fix."""
    try:
        raw = yaml.safe_load(text)
        lines = _line_index(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise SpecError(f"{where}: not valid YAML ({getattr(error, 'problem', error)}). "
                        "Check indentation and quoting on that line.") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a study file must be a mapping with at least `study:`, but it holds "
                        f"{type(raw).__name__}. Start from a file in search_spaces/.")
    try:
        spec = StudySpec.model_validate(raw)
        _validate(spec)
    except ValidationError as error:
        item = error.errors()[0]
        line = _line_of(lines, item["loc"])
        message = describe_validation_error(error, StudySpec)[0]
        raise SpecError(f"{source}:{line or '?'}: {message}.") from None
    except _Located as located:
        line = _line_of(lines, located.path)
        raise SpecError(f"{source}:{line or '?'}: {located.message}") from None
    return spec


def load_spec(path: str | Path) -> StudySpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(f"Cannot read the study file {path}: {error.strerror}. Check the path.") from None
    return parse_spec(text, str(path))
