"""Study files: YAML → a validated :class:`StudySpec`, with errors that name file, line and field.

A study file holds ``study`` (its name), ``description``, ``base`` (a partial trial
configuration; thesis defaults fill the rest), ``ablate`` (dotted keys → lists of values; every
combination is an arm), ``seeds`` (paired across arms), an optional ``search`` (parameters tuned
inside each arm), ``metric`` (validation metric, default ``ap_macro``), ``resources`` (per-trial
defaults for ``run``; not part of the study's identity) and ``max_concurrent``, and an optional
``reference`` (published numbers per arm, shown beside the study's in the report), and an optional ``baseline`` (what the report's Δ is taken against: an
axis → reference level mapping, or an arm's name; :func:`mmvit.study.arms.comparisons`).
``ablate`` is a product of axes or an explicit list of arms
(:mod:`mmvit.study.arms`). Every arm is resolved to a full TrialConfig and its model is built on the
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

from mmvit.config import TrialConfig, describe_validation_error
from mmvit.errors import SpecError
from mmvit.study.arms import Arm, arms_from_ablate, resolve
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
    seed: int | None = Field(None, description="the search trials' seed, never one of `seeds`; "
                                               "None = SEARCH_SEED (or max(seeds) + 1 if that is a final seed)")


SEARCH_SEED = 10_000
"""The search trials' seed when ``search.seed`` is not given: apart from any usual final seed, and
fixed, so a study that grows by seeds keeps searching on the same one."""


class Resources(_Strict):
    """Per-trial CPUs and GPUs: a default for ``run`` (``--cpus-per-trial`` / ``--gpus-per-trial``
    win), not part of the study's identity. None = chosen at run time (:func:`mmvit.study.runner.trial_resources`)."""

    cpu: float | None = Field(None, gt=0)
    gpu: float | None = Field(None, ge=0)


class Reference(_Strict):
    """Published numbers per arm (fractions, like the study's metrics) and where they are from."""

    citation: str
    arms: dict[str, dict[str, float]]

    @field_validator("arms")
    @classmethod
    def _metrics(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for metrics in value.values():
            for name, number in metrics.items():
                check_metric(name)
                if not 0 <= number <= 1:
                    raise ValueError(f"{name} = {number} is not a fraction in [0, 1]; write "
                                     f"{number / 100:g} for {number}%")
        return value


Axis = list[Any] | dict[str, dict[str, Any]]


class StudySpec(_Strict):
    study: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    ablate: dict[str, Axis] | list[dict[str, Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0])
    search: Search | None = None
    metric: str = "ap_macro"
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int | None = Field(None, ge=1)
    reference: Reference | None = None
    baseline: dict[str, Any] | str | int | float | None = Field(
        None, description="what Δ is taken against (a reporting choice, not identity): axis → reference "
                          "level for a product of axes, an arm's name for an arm list")

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

    @property
    def arms(self) -> list[Arm]:
        return arms_from_ablate(self.ablate)

    @property
    def search_seed(self) -> int:
        """The seed every search trial trains with: ``search.seed``, else one that is not a final seed."""
        if self.search is not None and self.search.seed is not None:
            return self.search.seed
        return SEARCH_SEED if SEARCH_SEED not in self.seeds else max(self.seeds) + 1

    def resolve(self, arm: Arm, seed: int, *, profile: dict[str, Any] | None = None,
                params: dict[str, Any] | None = None) -> TrialConfig:
        """The full trial configuration of one arm and seed (see :func:`mmvit.study.arms.resolve`)."""
        return resolve(self.base, arm, seed, metric=self.metric, profile=profile, params=params)

    def digest(self) -> str:
        """Hash of the resolved spec without ``resources`` (a run-time choice) and ``baseline`` (a
        reporting choice): neither is identity."""
        identity = self.model_dump(mode="json", exclude={"resources", "baseline"})
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


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


def _check_arm(spec: StudySpec, config: TrialConfig, arm: Arm) -> None:
    """Build the arm's model on the meta device: shape rules fail here, not after hours."""
    from mmvit.models import hyperparameters
    from mmvit.study.shapes import model_shape

    own = hyperparameters(config.model.fusion)
    for key in (*arm.settings, *(spec.search.params if spec.search else ())):
        field = key.split(".", 1)[1] if key.startswith("model.") else None
        if field and field != "fusion" and field.split(".")[0] not in own:
            raise _Located(_where_arm(spec, arm, key) if key in arm.settings else ("search", "params", key),
                           f"{key} does not apply to model {config.model.fusion!r} (arm {arm.name}): "
                           f"it takes {', '.join(own)}. Remove the axis or the arm.")
    model_shape(config)


def _where_arm(spec: StudySpec, arm: Arm, key: str | None = None) -> tuple:
    """The YAML path an error about ``arm`` (and its setting ``key``) points at."""
    if isinstance(spec.ablate, list):
        return ("ablate", spec.arms.index(arm), *([key] if key else []))
    if key in spec.ablate:
        return ("ablate", key)
    named = next((axis for axis, values in spec.ablate.items()
                  if isinstance(values, dict) and key in values.get(arm.labels.get(axis), {})), None)
    if named:
        return ("ablate", named, arm.labels[named], key)
    labelled = [axis for axis, values in spec.ablate.items() if isinstance(values, dict)]
    if labelled:
        return ("ablate", labelled[-1], arm.labels[labelled[-1]])
    return ("ablate", next(iter(arm.labels))) if arm.labels else ("base",)


def _validate_ablate(ablate: dict[str, Any] | list[dict[str, Any]]) -> None:
    if isinstance(ablate, list):
        if not ablate:
            raise _Located(("ablate",), "the list of arms is empty; give at least one arm or leave `ablate` out.")
        for position, item in enumerate(ablate):
            settings = {k: v for k, v in item.items() if k != "name"}
            if not settings:
                raise _Located(("ablate", position), f"arm {position + 1} sets nothing; give it at least one key.")
            for key in settings:
                _check_dotted(key, ("ablate", position, key))
        names = [arm.name for arm in arms_from_ablate(ablate)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise _Located(("ablate",), f"arm names must be unique, but {', '.join(repeated)} repeat; "
                                        "give the arms distinct `name`s or settings.")
        return
    for axis, values in ablate.items():
        if isinstance(values, dict):  # named axis: label → settings
            if not values:
                raise _Located(("ablate", axis), f"named axis {axis!r} needs at least one label.")
            if axis in _trial_keys():
                raise _Located(("ablate", axis), f"{axis!r} is a configuration key: give it a list of values, "
                                                 "or name the axis differently (e.g. `augmentation:`) to "
                                                 "give each label several settings.")
            for label, settings in values.items():
                if not isinstance(settings, dict) or not settings:
                    raise _Located(("ablate", axis, label),
                                   f"label {label!r} of axis {axis!r} must map configuration keys to values, "
                                   f"e.g. `{label}: {{augment.synchronised: false}}`.")
                for key in settings:
                    _check_dotted(key, ("ablate", axis, label, key))
            continue
        _check_dotted(axis, ("ablate", axis))
        if not values:
            raise _Located(("ablate", axis), f"axis {axis!r} needs at least one value.")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise _Located(("ablate", axis), f"axis {axis!r} repeats a value: {values}.")


def _validate_reference(spec: StudySpec) -> None:
    names = [arm.name for arm in spec.arms]
    for name in spec.reference.arms if spec.reference else ():
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"the arms are: {'; '.join(names)}."
            raise _Located(("reference", "arms", name),
                           f"reference.arms names {name!r}, which is not an arm of this study; {hint}")


def _validate_baseline(spec: StudySpec) -> None:
    """``baseline:`` names an arm of an arm list, or a level of each named axis of a product."""
    baseline = spec.baseline
    if baseline is None:
        return
    if isinstance(spec.ablate, list):
        names = [arm.name for arm in spec.arms]
        if isinstance(baseline, dict):
            raise _Located(("baseline",), "baseline: the arms are an explicit list, so name one arm "
                                          f"(e.g. `baseline: {names[0]!r}`); a mapping axis → level is for a "
                                          "product of axes.")
        if str(baseline) not in names:
            close = difflib.get_close_matches(str(baseline), names, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"the arms are: {'; '.join(names)}."
            raise _Located(("baseline",), f"baseline names the arm {baseline!r}, which is not an arm of this "
                                          f"study; {hint}")
        return
    if not isinstance(baseline, dict):
        example = next(iter(spec.ablate), "model.depth")
        raise _Located(("baseline",), f"baseline: for a product of axes, give each axis's reference level as a "
                                      f"mapping (e.g. `baseline: {{{example}: …}}`), but got {baseline!r}.")
    for axis, level in baseline.items():
        if axis not in spec.ablate:
            axes = list(spec.ablate)
            close = difflib.get_close_matches(axis, axes, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"the axes are: {', '.join(axes) or 'none'}."
            raise _Located(("baseline", axis), f"baseline names the axis {axis!r}, which is not an axis of "
                                               f"`ablate`; {hint}")
        levels = list(spec.ablate[axis])  # a named axis's labels, or an axis's values
        if not any(json.dumps(level, sort_keys=True) == json.dumps(v, sort_keys=True) for v in levels):
            raise _Located(("baseline", axis), f"baseline: {axis} = {level!r} is not one of that axis's "
                                               f"{'labels' if isinstance(spec.ablate[axis], dict) else 'values'} "
                                               f"({', '.join(repr(v) for v in levels)}); pick one of them.")


def _validate_grid_search(search: Search) -> None:
    ranges = [key for key, param in search.params.items() if param.type != "categorical"]
    if ranges:
        raise _Located(("search", "sampler"),
                       f"the grid sampler needs categorical parameters (a list of `choices`), but "
                       f"{', '.join(ranges)} is a range; list its values or use sampler: tpe.")
    points = 1
    for param in search.params.values():
        points *= len(param.choices)
    if search.trials_per_arm > points:
        raise _Located(("search", "trials_per_arm"),
                       f"trials_per_arm ({search.trials_per_arm}) exceeds the grid's {points} point(s), "
                       f"which would run points twice; set trials_per_arm: {points}.")


def _validate(spec: StudySpec, check_models: bool = True) -> None:
    _validate_ablate(spec.ablate)
    if spec.search and spec.search.sampler == "grid":
        _validate_grid_search(spec.search)
    if spec.search and spec.search.seed in spec.seeds:
        raise _Located(("search", "seed"),
                       f"search.seed must not be one of `seeds` (every final trial trains from scratch on a "
                       f"seed the search never used), but got search.seed={spec.search.seed} with seeds "
                       f"{spec.seeds}; pick another seed or leave search.seed out.")
    searched = set(spec.search.params) if spec.search else set()
    for key in searched:
        _check_dotted(key, ("search", "params", key))
    for arm in spec.arms:
        both = searched & set(arm.settings)
        if both:
            raise _Located(("search", "params", sorted(both)[0]),
                           f"{sorted(both)[0]} is both ablated and searched; an axis is either a grid or a search.")
    try:
        TrialConfig.model_validate(spec.base)
    except ValidationError as error:
        first = error.errors()[0]
        raise _Located(("base", *first["loc"]),
                       "base: " + "; ".join(describe_validation_error(error, TrialConfig))) from None
    for arm in spec.arms:
        try:
            config = spec.resolve(arm, spec.seeds[0])
        except SpecError as error:
            raise _Located(_where_arm(spec, arm), str(error)) from None
        try:
            if check_models:
                _check_arm(spec, config, arm)
        except SpecError as error:
            raise _Located(_where_arm(spec, arm), f"arm {arm.name}: {error}") from None
    _validate_reference(spec)
    _validate_baseline(spec)


def parse_spec(text: str, source: str = "<string>", *, check_models: bool = True) -> StudySpec:
    """Validate study YAML; a SpecError names ``source:line``, the field and the fix.
    ``check_models=False`` skips building each arm's model on the meta device (the torch and
    timm imports take seconds), for a caller that checks them later."""
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
        _validate(spec, check_models)
    except ValidationError as error:
        item = error.errors()[0]
        line = _line_of(lines, item["loc"])
        message = describe_validation_error(error, StudySpec)[0]
        raise SpecError(f"{source}:{line or '?'}: {message}.") from None
    except _Located as located:
        line = _line_of(lines, located.path)
        raise SpecError(f"{source}:{line or '?'}: {located.message}") from None
    return spec


def load_spec(path: str | Path, *, check_models: bool = True) -> StudySpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(f"Cannot read the study file {path}: {error.strerror}. Check the path.") from None
    return parse_spec(text, str(path), check_models=check_models)
