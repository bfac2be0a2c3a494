"""TrialConfig: everything one training run needs — model, data, augment, train, seed.

Defaults are the thesis's (Table 7.1 and §6.2). A study file's ``base:`` is a TrialConfig,
and its ablation axes are dotted keys into it (``model.depth``, ``data.speckle_filter``…).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mmvit.errors import SpecError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """The network (thesis ch. 5 and Table 7.1)."""

    fusion: str = Field("sct", description="vit (single modality), early, modality_token, "
                                           "channel_token, middle, cross_attention or sct")
    patch_size: int = Field(20, gt=0)
    depth: int = Field(8, gt=0)
    embed_dim: int = Field(256, gt=0)
    num_heads: int = Field(8, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    drop_rate: float = Field(0.0, ge=0, lt=1)
    attn_drop_rate: float = Field(0.0, ge=0, lt=1)
    drop_path_rate: float = Field(0.25, ge=0, lt=1)
    modality_depth: int = Field(6, gt=0, description="middle fusion: depth of each modality encoder")
    fusion_depth: int = Field(2, gt=0, description="middle fusion: depth of the fusion encoder")
    overrides: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="per-modality hyper-parameters of dual-encoder models, e.g. {s2: {drop_rate: 0.1}}")


class DataConfig(_Section):
    """Which archive, which modalities, and the preprocessing that is cached."""

    root: str | None = Field(None, description="archive root; None = the demo archive")
    modalities: Literal["s2", "s1", "rgb", "s2+s1", "rgb+s1"] = "s2+s1"
    resampling: Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos"] = "bilinear"
    speckle_filter: str = "none"
    s1_normalisation: Literal["standardise", "minmax", "none"] = "standardise"
    s1_dtype: Literal["float32", "float16"] = "float32"
    cache_dir: str | None = None
    num_workers: int | None = Field(None, ge=0, description="unused since batches are gathered in the trial's "
                                                            "process (mmvit.data.loader); kept so stored configurations load")
    max_train_patches: int | None = Field(None, gt=0, description="train on a fixed subset (quick runs)")

    @field_validator("speckle_filter")
    @classmethod
    def _speckle(cls, value: str) -> str:
        from mmvit.errors import DataError
        from mmvit.speckle_names import canonical_speckle_name

        try:
            return canonical_speckle_name(value)
        except DataError as error:
            raise ValueError(str(error)) from None


class AugmentConfig(_Section):
    """Thesis §6.2 augmentations (all on in the fusion experiments, desynchronised)."""

    flip: bool = True
    crop: bool = True
    crop_scale: tuple[float, float] = (0.5, 1.0)
    synchronised: bool = True
    modality_drop: float = Field(0.0, ge=0, le=1)

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError(f"`0 < low <= high <= 1` must hold, but got (low={low}, high={high})")
        return value


class TrainConfig(_Section):
    """Optimisation (thesis §6.2)."""

    epochs: int = Field(60, gt=0)
    batch_size: int = Field(1024, gt=0)
    eval_batch_size: int | None = Field(None, gt=0, description="None = 2 × batch_size")
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, description="linear learning-rate warm-up from 0 (the thesis "
                                                        "states none); the schedule steps every batch")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, fp32 elsewhere (the thesis states none)")
    threshold: float = Field(0.5, gt=0, lt=1, description="for F2, Hamming loss, precision, recall")
    metric: str = Field("ap_macro", description="validation metric that picks the best epoch")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    compile: bool = Field(False, description="torch.compile the model (compiles once per trial process)")

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        from mmvit.metric_names import check_metric

        return check_metric(value)


class TrialConfig(_Section):
    """One trial: a point of a study's grid with one seed."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: int = 0


def known_keys(section: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (sub-)section that ``loc`` points into."""
    for part in loc[:-1]:
        field = section.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        section = annotation
    return list(section.model_fields)


def describe_validation_error(error: ValidationError, root: type[BaseModel], prefix: tuple = ()) -> list[str]:
    """One sentence per problem: the dotted field, the rule, the value, a "did you mean"."""
    lines = []
    for item in error.errors():
        loc = prefix + tuple(item["loc"])
        field = ".".join(str(p) for p in loc)
        if item["type"] == "extra_forbidden":
            keys = known_keys(root, tuple(item["loc"]))
            close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(keys)}"
            lines.append(f"{field} is not a known key{hint}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{field}: {message} (got {item.get('input')!r})")
    return lines


def _describe(error: ValidationError, source: str) -> str:
    lines = describe_validation_error(error, TrialConfig)
    return f"{source} is not a valid trial configuration: " + "; ".join(lines) + "."


def trial_config(raw: dict[str, Any] | None = None, *, source: str = "configuration") -> TrialConfig:
    """Validate a (possibly partial) nested dict; errors name the field and the value."""
    try:
        return TrialConfig.model_validate(raw or {})
    except ValidationError as error:
        raise SpecError(_describe(error, source)) from None


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "model.depth", 4)`` — the form ablation axes and ``--set`` use."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"{key!r}: {part!r} is a value, not a section.")
    node[parts[-1]] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"model.depth=4"`` → ``("model.depth", 4)``; the value is read as YAML (numbers, lists)."""
    import yaml

    if "=" not in text:
        raise SpecError(f"--set takes key=value (e.g. model.depth=4), but got {text!r}.")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def load_trial_config(path: Path | None, assignments: list[str], data_root: Path | None) -> TrialConfig:
    """A TrialConfig from an optional YAML file, ``key=value`` overrides and a data root."""
    import yaml

    raw: dict[str, Any] = {}
    source = "the command line"
    if path is not None:
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as error:
            raise SpecError(f"Cannot read the configuration file {path}: {error.strerror}.") from None
        except yaml.YAMLError as error:
            raise SpecError(f"{path} is not valid YAML: {error}.") from None
        if not isinstance(raw, dict):
            raise SpecError(f"{path} must hold a mapping with sections model, data, augment, train.")
    for text in assignments:
        key, value = parse_assignment(text)
        set_dotted(raw, key, value)
    if data_root is not None:
        set_dotted(raw, "data.root", str(data_root))
    return trial_config(raw, source=source)
