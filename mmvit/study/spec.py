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
is refused before anything runs. The file itself is read strictly (:class:`_StudyLoader`): UTF-8,
at most :data:`MAX_SPEC_BYTES`, one mapping, no key given twice, and no anchors, aliases, tags or
merge keys.
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import json
import os
import re
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmvit.config import TrialConfig, describe_validation_error
from mmvit.errors import SpecError
from mmvit.metric_names import HIGHER_IS_BETTER, check_metric
from mmvit.study.arms import Arm, arms_from_ablate, resolve


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


MAX_SEED = 2**32 - 1
"""Seeds (``seeds``, ``search.seed``) must lie in 0..MAX_SEED, the range every generator takes
(torch takes no seed beyond 64 bits, NumPy none negative or beyond 32): a file is refused when it
is validated, not when its trials start."""


class Search(_Strict):
    sampler: Literal["tpe", "random", "grid", "cmaes", "nsga2"] = "tpe"
    trials_per_arm: int = Field(10, ge=1)
    params: dict[str, SearchParam]
    asha: Asha | None = Field(default_factory=Asha)
    seed: int | None = Field(None, ge=0, le=MAX_SEED,
                             description="the search trials' seed, never one of `seeds`; "
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
        outside = [seed for seed in value if not 0 <= seed <= MAX_SEED]
        if outside:
            raise ValueError(f"every seed must be in 0..{MAX_SEED} (the random generators' range), and "
                             f"{', '.join(map(str, outside))} is not")
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


# ---------------------------------------------------------------------------- reading YAML

MAX_SPEC_BYTES = 64 * 1024
"""The largest study file read. The shipped ones are under 3 KiB; PyYAML's pure-Python loader
(needed to refuse anchors as they are parsed) reads dense YAML at roughly 200 KiB/s on a busy
machine, so this bound keeps a refusal of any file well under a second."""

MAX_DEPTH = 32
"""The deepest nesting of mappings and lists read (a study file needs about six); deeper input
would only recurse in the composer."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _show_path(path: tuple) -> str:
    """``('base', 'train')`` → ``base.train``; dotted keys and list positions in brackets."""
    shown = ""
    for part in path:
        if isinstance(part, str) and re.fullmatch(r"[A-Za-z0-9_-]+", part):
            shown += f".{part}" if shown else part
        else:
            shown += f"[{part!r}]"
    return shown


class _StudyLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the refusals a study file needs, made in the one pass that loads it.

    Anchors, aliases and explicit tags (``!!python/…``, ``!!set``: PyYAML's constructors crash on
    some) are refused as their parser event arrives, before anything is composed or expanded (a
    "billion laughs" file stops at its first ``&``); merge keys, keys given twice at any
    depth (YAML would silently keep the last) and nesting deeper than :data:`MAX_DEPTH` are refused
    as the mappings are built. ``lines`` maps every key's and list item's path to its 1-based line,
    for messages about values found later."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self.lines: dict[tuple[str, ...], int] = {}
        self._paths: dict[int, tuple] = {}  # id(node) → its path of keys and positions
        self._depth = 0

    def _refuse(self, mark: yaml.Mark, message: str) -> NoReturn:
        raise SpecError(f"{self.source}:{mark.line + 1}: {message}")

    def get_single_node(self) -> yaml.Node | None:
        """PyYAML's, with a study-file message for a second document."""
        self.get_event()  # STREAM-START
        document = None if self.check_event(yaml.StreamEndEvent) else self.compose_document()
        if not self.check_event(yaml.StreamEndEvent):
            self._refuse(self.peek_event().start_mark,
                         "a second YAML document starts here (after a `---` or `...` line), but a study "
                         "file is one mapping. Remove the separator, or split the file in two.")
        self.get_event()  # STREAM-END
        return document

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._refuse(event.start_mark, f"the alias *{event.anchor} is refused: study files may not use "
                                           "YAML anchors and aliases (&name, *name). Write the value out in full.")
        if event.anchor is not None:
            self._refuse(event.start_mark, f"the anchor &{event.anchor} is refused: study files may not use "
                                           "YAML anchors and aliases (&name, *name). Remove it and write each "
                                           "value out in full.")
        tag = getattr(event, "tag", None)
        if tag not in (None, "!"):
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            self._refuse(event.start_mark, f"the tag {shown} is refused: study files hold plain values, typed by "
                                           "how they are written. Remove the tag (quote a value to keep it as text).")
        if self._depth >= MAX_DEPTH:
            self._refuse(event.start_mark, f"mappings and lists are nested more than {MAX_DEPTH} deep here; a "
                                           "study file needs a few levels. Check the brackets and indentation.")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A scalar that YAML's rules turn into a value Python refuses (a date 2024-13-01, an
        integer of 5,000 digits) is the file's error, not a crash."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as error:
            value = str(node.value)
            shown = repr(value if len(value) <= 40 else value[:40] + "…")
            reason = str(error).split(";")[0]  # not Python's advice on raising its limits
            self._refuse(node.start_mark, f"the value {shown} cannot be read ({reason}). Quote it to keep it "
                                          "as text, or correct it.")

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        path = self._paths.get(id(node), ())
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self._refuse(key_node.start_mark, "the merge key `<<` is refused: study files may not merge "
                                                  "mappings. Write the keys out in full.")
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, Hashable):
                if key in seen:
                    where = f" under {_show_path(path)}" if path else ""
                    lines = f"lines {seen[key]} and {line}" if seen[key] != line else f"both on line {line}"
                    self._refuse(key_node.start_mark, f"key {key!r}{where} is given twice ({lines}); YAML "
                                                      "would silently keep only the last. Remove one of them.")
                seen[key] = line
            self._record(value_node, path + (key,), line)
        return super().construct_mapping(node, deep=deep)

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> list:
        path = self._paths.get(id(node), ())
        for position, item in enumerate(node.value):
            self._record(item, path + (position,), item.start_mark.line + 1)
        return super().construct_sequence(node, deep=deep)

    def _record(self, node: yaml.Node, path: tuple, line: int) -> None:
        self.lines[tuple(str(part) for part in path)] = line
        self._paths[id(node)] = path


def _check_size(size: int, source: str) -> None:
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: a study file may hold at most {MAX_SPEC_BYTES // 1024} KiB, but this one "
                        f"holds {size:,} bytes. Check the path; a study needs a few KiB.")


def _decode(data: bytes, source: str) -> str:
    """UTF-8 text, or a SpecError naming the line and byte where it is not."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                          (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            raise SpecError(f"{source}: a study file must be UTF-8 text, but this one is {encoding} (it starts "
                            f"with a {encoding} byte-order mark). Save it as UTF-8.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - data.rfind(b"\n", 0, error.start)
        raise SpecError(f"{source}:{line}: a study file must be UTF-8 text, but byte 0x{data[error.start]:02x} "
                        f"(column {column}) is not UTF-8: a binary file, or text saved as Latin-1 or "
                        "Windows-1252? Save it as UTF-8, or check the path.") from None


def _yaml_error(error: yaml.YAMLError, text: str, source: str) -> SpecError:
    """PyYAML's error as one study-file message with ``source:line``."""
    if isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
        return SpecError(f"{source}:{line}: the character #x{error.character:04x} is not allowed in YAML (a "
                         "control character: is this a binary file?). Remove it, or check the path.")
    mark = getattr(error, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark else source
    problem = getattr(error, "problem", None) or error
    if isinstance(error, yaml.constructor.ConstructorError):  # a list as a key, a bare `=`
        fix = "Write the key as a plain name." if "unhashable" in str(problem) else "Quote it to keep it as text."
        return SpecError(f"{where}: YAML cannot build this key or value ({problem}). {fix}")
    hint = "Indent with spaces, not tabs." if "\\t" in str(problem) else "Check indentation and quoting on that line."
    return SpecError(f"{where}: not valid YAML ({problem}). {hint}")


def _load_yaml(text: str, source: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    """The file's data and the line of every key path, through :class:`_StudyLoader`."""
    _check_size(len(text.encode("utf-8", "replace")), source)
    loader = None
    try:
        loader = _StudyLoader(text, source)
        return loader.get_single_data(), loader.lines
    except yaml.YAMLError as error:
        raise _yaml_error(error, text, source) from None
    finally:
        if loader is not None:
            loader.dispose()


def _describe_kind(raw: Any) -> str:
    """What a document that is not a mapping holds, in words."""
    if raw is None:
        return "nothing (it is empty, holds only comments, or holds only null)"
    if isinstance(raw, list):
        return f"a list of {len(raw)} item(s)"
    shown = repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:40] + "…"
    return f"a single {type(raw).__name__} value, {shown}"


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
    from mmvit.models import check_settings
    from mmvit.study.shapes import model_shape

    base_model = spec.base.get("model") if isinstance(spec.base.get("model"), dict) else {}
    places = [(f"model.{key}", ("base", "model", key)) for key in base_model]
    places += [(key, _where_arm(spec, arm, key)) for key in arm.settings]
    places += [(key, ("search", "params", key)) for key in (spec.search.params if spec.search else ())]
    for key, where in places:
        field = key.split(".", 1)[1] if key.startswith("model.") else None
        if field and field != "fusion":
            try:
                check_settings(config.model.fusion, [field], type(config.model).model_fields)
            except SpecError as error:
                raise _Located(where, f"arm {arm.name}: {error}.") from None
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


def _some(problems: list[str], shown: int = 3) -> str:
    """The first few problems: a file with thousands of bad keys still gets a one-paragraph message."""
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more


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
                       "base: " + _some(describe_validation_error(error, TrialConfig))) from None
    for arm in spec.arms:
        try:
            spec.resolve(arm, spec.seeds[0])
        except SpecError as error:
            raise _Located(_where_arm(spec, arm), str(error)) from None
    if check_models:
        _check_models(spec)
    _validate_reference(spec)
    _validate_baseline(spec)


def _check_models(spec: StudySpec) -> None:
    for arm in spec.arms:
        try:
            _check_arm(spec, spec.resolve(arm, spec.seeds[0]), arm)
        except SpecError as error:
            raise _Located(_where_arm(spec, arm), f"arm {arm.name}: {error}") from None


@dataclass(frozen=True)
class StudyFile:
    """A study file read once: its spec, and its lines, so a check run later (the models, while
    Ray starts) still names ``file:line``."""

    spec: StudySpec
    source: str
    lines: Any

    def check_models(self) -> None:
        """Build each arm's model on the meta device: the check ``check_models=False`` left out."""
        try:
            _check_models(self.spec)
        except _Located as located:
            raise SpecError(f"{self.source}:{_line_of(self.lines, located.path) or '?'}: {located.message}") from None


def parse_spec(text: str, source: str = "<string>", *, check_models: bool = True) -> StudySpec:
    """Validate study YAML; a SpecError names ``source:line``, the field and the fix.
    ``check_models=False`` skips building each arm's model on the meta device (the torch and
    timm imports take seconds), for a caller that checks them later."""
    return _parse(text, source, check_models).spec


def _parse(text: str, source: str, check_models: bool) -> StudyFile:
    raw, lines = _load_yaml(text, source)
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a study file must be a mapping with at least `study:`, but it holds "
                        f"{_describe_kind(raw)}. Start from a file in search_spaces/.")
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
    return StudyFile(spec, source, lines)


def _read(path: Path) -> bytes:
    """The file's bytes, refusing one over :data:`MAX_SPEC_BYTES` before reading it all."""
    try:
        with path.open("rb") as file:
            _check_size(os.fstat(file.fileno()).st_size, str(path))
            data = file.read(MAX_SPEC_BYTES + 1)  # a pipe or /proc file reports size 0
    except OSError as error:
        raise SpecError(f"Cannot read the study file {path}: {error.strerror}. Check the path.") from None
    _check_size(len(data), str(path))
    return data


def load_spec(path: str | Path, *, check_models: bool = True) -> StudySpec:
    """Read and validate a study file; every problem is a SpecError naming the file."""
    return read_study(path, check_models=check_models).spec


def read_study(path: str | Path, *, check_models: bool = True) -> StudyFile:
    """As :func:`load_spec`, keeping what :meth:`StudyFile.check_models` needs to run later."""
    path = Path(path)
    return _parse(_decode(_read(path), str(path)), str(path), check_models)
