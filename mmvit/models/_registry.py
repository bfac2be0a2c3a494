"""Model registry: ``create_model(name, in_chans=…, **hparams)`` and ``list_models()``.

A model is a class registered under its thesis name; its constructor's keyword arguments are
its hyper-parameters. A ``TrialConfig`` carries the hyper-parameters of every model (Middle
Fusion's ``modality_depth`` reaches ``sct`` too), so a hyper-parameter that belongs to other
models is accepted while it has their default value and refused otherwise: setting it would
silently change nothing.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, TypeVar

from torch import nn

from mmvit.errors import SpecError

M = TypeVar("M", bound=type[nn.Module])

_MODELS: dict[str, type[nn.Module]] = {}
_FIXED = ("in_chans", "num_classes", "img_size")
DEFAULT_IN_CHANS = {"s2": 10, "s1": 2}


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: register the model under ``name`` (also stored as ``model_name``)."""

    def register(cls: M) -> M:
        if name in _MODELS:
            raise ValueError(f"model names must be unique, but {name!r} is registered twice")
        cls.model_name = name
        _MODELS[name] = cls
        return cls

    return register


def list_models() -> list[str]:
    """Registered names, in the order of the thesis (single modality first)."""
    return list(_MODELS)


def hyperparameters(name: str) -> dict[str, Any]:
    """The model's hyper-parameters and their defaults."""
    signature = inspect.signature(_lookup(name))
    return {key: p.default for key, p in signature.parameters.items() if key not in _FIXED}


def create_model(name: str, in_chans: Mapping[str, int] | None = None, num_classes: int = 19,
                 img_size: int = 120, **hparams: Any) -> nn.Module:
    """Build model ``name`` for inputs ``in_chans`` (None = ``{"s2": 10, "s1": 2}``; RGB is
    ``{"s2": 3}``); unset hyper-parameters take the thesis defaults (Table 7.1)."""
    cls = _lookup(name)
    own = hyperparameters(name)
    kwargs = {}
    for key, value in hparams.items():
        if key in own:
            kwargs[key] = value
        else:
            _check_foreign(name, key, value, own)
    return cls(in_chans=dict(DEFAULT_IN_CHANS if in_chans is None else in_chans),
               num_classes=num_classes, img_size=img_size, **kwargs)


def _lookup(name: str) -> type[nn.Module]:
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), _MODELS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SpecError(f"model must be one of {', '.join(_MODELS)}, but got {name!r}{hint}")
    return _MODELS[name]


def _is_default(value: Any, default: Any) -> bool:
    return value == default or (default is None and isinstance(value, Mapping) and not value)


def _check_foreign(name: str, key: str, value: Any, own: dict[str, Any]) -> None:
    """Accept another model's hyper-parameter at its default, else say whose it is."""
    users = {other: params[key] for other in _MODELS
             if key in (params := hyperparameters(other))}
    if not users:
        known = sorted({k for other in _MODELS for k in hyperparameters(other)})
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SpecError(f"hyper-parameters must be among {', '.join(known)}, but got {key!r}{hint}")
    if not all(_is_default(value, default) for default in users.values()):
        raise SpecError(f"{key!r} is a hyper-parameter of {', '.join(users)}, not of {name!r} "
                        f"(which takes {', '.join(own)}), but got {key}={value!r}")


def check_settings(name: str, keys: Iterable[str], settable: Collection[str] | None = None) -> None:
    """Refuse settings model ``name`` does not take, whatever their value: a ``TrialConfig``
    carries every model's hyper-parameters, and one the model does not take would be dropped
    when the model is built (``depth`` set for Middle Fusion, which takes ``modality_depth``
    and ``fusion_depth``). The one gate for what a user sets: study files and ``train --set``.
    ``settable``: the keys a configuration can set (the message lists those the model takes)."""
    own = hyperparameters(name)
    for key in keys:
        if key.split(".")[0] not in own:
            takes = [k for k in own if settable is None or k in settable]
            raise SpecError(f"model.{key} is not a setting of model {name!r}, which takes "
                            f"{', '.join(takes)}; remove model.{key} or choose a model that takes it")
