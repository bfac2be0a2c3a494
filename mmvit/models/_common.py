"""Pieces every model shares: hyper-parameter checks, token embeddings, encoder stacks, heads.

Built from timm's own parts (``PatchEmbed``, ``Block``, ``LayerNorm``, its ViT init) in the
style of timm's ``vision_transformer.py``: layers are passed in as classes, switched-off
parts are ``nn.Identity()``, stochastic-depth rates are computed once and handed to each
block, and every model has ``forward_features`` / ``forward_head`` / ``forward``.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from timm.layers import LayerNorm, PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import Tensor, nn

from mmvit.errors import SpecError

MODALITIES = ("s2", "s1")
"""Input keys in their canonical order: channels and token groups are always s2 first."""

OVERRIDABLE = ("drop_rate", "attn_drop_rate", "drop_path_rate")
"""Hyper-parameters one encoder of a dual-encoder model may set for itself (thesis Table A.5)."""

MIN_PATCH = 4


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{name} must be a positive integer, but got {name}={value!r}")
    return value


def check_patch_size(patch_size: Any, img_size: Any) -> int:
    """Patches must tile the image exactly; returns the number of patches."""
    img_size = positive_int("img_size", img_size)
    valid = [p for p in range(MIN_PATCH, img_size + 1) if img_size % p == 0]
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size not in valid:
        raise SpecError(
            f"patch_size must divide img_size ({img_size}) and be at least {MIN_PATCH}: "
            f"valid {', '.join(map(str, valid))}; got {patch_size!r}")
    return (img_size // patch_size) ** 2


def check_in_chans(model_name: str, in_chans: Any, fusion: bool) -> dict[str, int]:
    """Validate the input modalities and return them in canonical order (s2, then s1)."""
    if not isinstance(in_chans, Mapping) or not in_chans:
        raise SpecError(f"in_chans must map modalities to channel counts, e.g. {{'s2': 10, 's1': 2}}, "
                        f"but got in_chans={in_chans!r}")
    for key, chans in in_chans.items():
        if key not in MODALITIES:
            raise SpecError(f"in_chans keys must be 's2' or 's1' (RGB is {{'s2': 3}}), "
                            f"but got {key!r} in in_chans={dict(in_chans)!r}")
        positive_int(f"in_chans[{key!r}]", chans)
    if fusion and len(in_chans) != 2:
        raise SpecError(f"fusion model {model_name!r} needs two modalities ('s2' and 's1'), "
                        f"but got in_chans={dict(in_chans)!r}; use data.modalities s2+s1 or rgb+s1")
    if not fusion and len(in_chans) != 1:
        raise SpecError(f"model {model_name!r} takes one modality ('s2' or 's1'; a fusion model takes "
                        f"both), but got in_chans={dict(in_chans)!r}; use data.modalities s2, s1 or rgb, "
                        "or a fusion model")
    return {key: in_chans[key] for key in MODALITIES if key in in_chans}


def check_inputs(model_name: str, x: Mapping[str, Tensor], in_chans: Mapping[str, int]) -> None:
    """Fail with the expected and the received inputs instead of a bare KeyError deep inside."""
    if not all(key in x and x[key].shape[1] == chans for key, chans in in_chans.items()):
        got = {key: tuple(value.shape) for key, value in x.items()}
        raise ValueError(f"model {model_name!r} expects inputs with channels {dict(in_chans)} "
                         f"(as (B, C, H, W) tensors), but got shapes {got}")


def channels(x: Mapping[str, Tensor], keys: tuple[str, ...]) -> Tensor:
    """The inputs ``keys`` as one image, channels concatenated (no copy for a single input)."""
    return x[keys[0]] if len(keys) == 1 else torch.cat([x[key] for key in keys], dim=1)


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate of each block: linear from 0 to ``drop_path_rate`` (timm's rule)."""
    return torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()


@dataclass(frozen=True)
class EncoderArgs:
    """Hyper-parameters of one Transformer encoder; defaults are thesis Table 7.1 and §6.2.

    ``drop_rate`` is dropout after the token embedding and inside every block (timm's
    ``pos_drop`` and ``proj_drop``); the thesis's "dropout". Validated on construction, so a
    per-modality override (``dataclasses.replace``) is validated too.
    """

    embed_dim: int = 256
    num_heads: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.25
    norm_layer: Callable[[int], nn.Module] = LayerNorm
    act_layer: Callable[[], nn.Module] = nn.GELU

    def __post_init__(self) -> None:
        positive_int("embed_dim", self.embed_dim)
        positive_int("num_heads", self.num_heads)
        if self.embed_dim % self.num_heads:
            raise SpecError(f"embed_dim must be divisible by num_heads, but got "
                            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise SpecError(f"mlp_ratio must be positive, but got mlp_ratio={self.mlp_ratio!r}")
        for name in OVERRIDABLE:
            rate = getattr(self, name)
            if not (isinstance(rate, (int, float)) and 0 <= rate < 1):
                raise SpecError(f"{name} must lie in [0, 1), but got {name}={rate!r}")

    def blocks(self, depth: int, *, first: int = 0, total: int | None = None,
               block_fn: Callable[..., nn.Module] = Block) -> nn.Sequential:
        """``depth`` blocks that sit at ``first``… of a stack of ``total`` for the drop-path ramp.

        A stack split into parts (Middle Fusion: modality encoders, then the fusion encoder)
        keeps one linear ramp over the whole path an input travels.
        """
        rates = drop_path_rates(self.drop_path_rate, total or depth)[first:first + depth]
        return nn.Sequential(*(
            block_fn(dim=self.embed_dim, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                     qkv_bias=self.qkv_bias, proj_drop=self.drop_rate, attn_drop=self.attn_drop_rate,
                     drop_path=rate, norm_layer=self.norm_layer, act_layer=self.act_layer)
            for rate in rates))


def modality_args(args: EncoderArgs, overrides: Mapping[str, Mapping[str, float]] | None,
                  in_chans: Mapping[str, int]) -> dict[str, EncoderArgs]:
    """Each encoder's hyper-parameters: ``args`` with that modality's ``overrides`` applied."""
    overrides = overrides or {}
    if not (isinstance(overrides, Mapping) and all(isinstance(v, Mapping) for v in overrides.values())):
        raise SpecError(f"overrides must map a modality to hyper-parameters, e.g. "
                        f"{{'s2': {{'drop_rate': 0.1}}}}, but got overrides={overrides!r}")
    for modality, values in overrides.items():
        if modality not in in_chans:
            names = ", ".join(map(repr, in_chans))
            raise SpecError(f"overrides must name a modality of the model ({names}), but got {modality!r}")
        unknown = [key for key in values if key not in OVERRIDABLE]
        if unknown:
            raise SpecError(f"overrides may set {', '.join(OVERRIDABLE)} per modality, "
                            f"but got {unknown[0]!r} for {modality!r}")
    return {modality: dataclasses.replace(args, **overrides.get(modality, {})) for modality in in_chans}


class PatchTokens(nn.Module):
    """timm's ``PatchEmbed`` on the given inputs (channels concatenated) plus a learned
    position embedding per patch (thesis §3.2).

    With several inputs (Early Fusion) the concatenation is never built: a patch projection of
    concatenated channels is the sum of the projections of each input by its slice of the
    filters, so each input is projected by its slice and the results added. Same parameters and
    the same function (to float rounding), without copying the whole batch once more per step
    (a 44 MB tensor at batch 64 on 2 CPU cores: 15-20 % of a small model's step)."""

    def __init__(self, keys: Iterable[str], in_chans: int, img_size: int, patch_size: int,
                 embed_dim: int) -> None:
        super().__init__()
        self.keys = tuple(keys)
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim)
        self.grid_size = tuple(self.patch_embed.grid_size)
        self.num_tokens = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.empty(1, self.num_tokens, embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        if len(self.keys) == 1:
            return self.patch_embed(x[self.keys[0]]) + self.pos_embed
        return self.patch_embed.norm(self._project_each(x).flatten(2).transpose(1, 2)) + self.pos_embed

    def _project_each(self, x: Mapping[str, Tensor]) -> Tensor:
        """``patch_embed.proj`` of the inputs' channel concatenation, as a sum over inputs."""
        proj = self.patch_embed.proj
        filters = proj.weight.split([x[key].shape[1] for key in self.keys], dim=1)
        out = None
        for key, weight in zip(self.keys, filters):
            part = nn.functional.conv2d(x[key], weight, proj.bias if out is None else None, stride=proj.stride)
            out = part if out is None else out.add_(part)
        if tuple(out.shape[-2:]) != self.grid_size:  # what PatchEmbed's own size check guards
            raise ValueError(f"input size {tuple(x[self.keys[0]].shape[-2:])} does not match the model's "
                             f"{tuple(self.patch_embed.img_size)}")
        return out


class TokenSequence(nn.Module):
    """The encoder input: the class token, then each part's tokens in order, then dropout.

    The class token comes first (timm's convention; the thesis writes it last, which attention
    cannot tell apart) and has no position embedding of its own (as timm's
    ``no_embed_class``): a learned constant plus a learned constant is one learned constant.
    """

    def __init__(self, parts: Iterable[nn.Module], embed_dim: int, drop_rate: float) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.num_tokens = 1 + sum(part.num_tokens for part in self.parts)
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.init_weights()

    def init_weights(self) -> None:
        trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        parts = [part(x) for part in self.parts]
        cls = self.cls_token.expand(parts[0].shape[0], -1, -1)
        return self.pos_drop(torch.cat([cls, *parts], dim=1))


def make_head(embed_dim: int, num_classes: int) -> nn.Module:
    return nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()


def init_weights(model: nn.Module) -> None:
    """timm's ViT init: Linear weights trunc-normal (std .02), zero biases; token and position
    embeddings re-drawn by their modules' ``init_weights``."""
    model.apply(init_weights_vit_timm)


@torch.no_grad()
def init_mean_fusion(layer: nn.Linear) -> None:
    """Start a 2D → D fusion layer as the mean of its two inputs, ``W = [I/2, I/2]``, ``b = 0``.

    With timm's init (std .02) each fusion layer shrinks the token it fuses about four-fold and
    mixes its features at random; a class token that passes one such layer per block (SCT) then
    carries only what the last block gathered, and the encoders' gradients pass through a
    product of random projections. Starting from the mean keeps both modalities' features
    where the encoders put them, as a residual path does, and the layer still learns any
    ``W``. An initialisation only: the architecture (thesis Eq. 5.3) is unchanged.
    """
    dim = layer.out_features
    if layer.in_features != 2 * dim:
        raise ValueError(f"a fusion layer maps 2D → D, but got {layer.in_features} → {dim}")
    eye = torch.eye(dim, dtype=layer.weight.dtype, device=layer.weight.device)
    layer.weight.copy_(torch.cat([eye, eye], dim=1) / 2)
    if layer.bias is not None:
        layer.bias.zero_()


class ClassTokenViT(nn.Module, metaclass=ABCMeta):
    """A ViT whose head reads token 0 of ``forward_features`` (the class token)."""

    model_name: ClassVar[str]
    in_chans: dict[str, int]
    num_classes: int
    num_tokens: int
    """Tokens in each sequence an attention layer sees (the class token included)."""
    head: nn.Module

    @abstractmethod
    def forward_features(self, x: Mapping[str, Tensor]) -> Tensor:
        """Tokens after the encoder(s) and norm, class token first: (B, N, D)."""

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        """``{"s2": (B, C, H, W), "s1": …}`` → logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))


class SingleEncoderViT(ClassTokenViT):
    """One Transformer encoder over one token sequence (thesis §3.2, §5.1–5.3); a subclass only
    says how the inputs become tokens (``tokenizers``)."""

    fusion: ClassVar[bool] = True

    def __init__(
            self,
            in_chans: Mapping[str, int],
            num_classes: int = 19,
            img_size: int = 120,
            patch_size: int = 20,
            depth: int = 8,
            embed_dim: int = 256,
            num_heads: int = 8,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.25,
            norm_layer: Callable[[int], nn.Module] = LayerNorm,
            act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.in_chans = check_in_chans(self.model_name, in_chans, self.fusion)
        check_patch_size(patch_size, img_size)
        args = EncoderArgs(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                           drop_path_rate, norm_layer, act_layer)
        self.num_classes = num_classes
        self.tokens = TokenSequence(self.tokenizers(self.in_chans, img_size, patch_size, embed_dim),
                                    embed_dim, drop_rate)
        self.num_tokens = self.tokens.num_tokens
        self.blocks = args.blocks(positive_int("depth", depth))
        self.norm = norm_layer(embed_dim)
        self.head = make_head(embed_dim, num_classes)
        init_weights(self)

    @abstractmethod
    def tokenizers(self, in_chans: dict[str, int], img_size: int, patch_size: int,
                   embed_dim: int) -> list[nn.Module]:
        """Modules ``x -> (B, N, D)`` whose tokens follow the class token, in order."""

    def forward_features(self, x: Mapping[str, Tensor]) -> Tensor:
        check_inputs(self.model_name, x, self.in_chans)
        return self.norm(self.blocks(self.tokens(x)))


class ModalityEncoder(nn.Module):
    """One modality's encoder in a dual-encoder model: its own tokens (class token first),
    blocks and final norm. A container: each fusion model steps through it its own way."""

    def __init__(self, modality: str, in_chans: int, img_size: int, patch_size: int,
                 args: EncoderArgs, depth: int, *, total_depth: int | None = None,
                 block_fn: Callable[..., nn.Module] = Block) -> None:
        super().__init__()
        self.tokens = TokenSequence(
            [PatchTokens((modality,), in_chans, img_size, patch_size, args.embed_dim)],
            args.embed_dim, args.drop_rate)
        self.blocks = args.blocks(depth, total=total_depth, block_fn=block_fn)
        self.norm = args.norm_layer(args.embed_dim)


def modality_encoders(in_chans: dict[str, int], img_size: int, patch_size: int, args: EncoderArgs,
                      overrides: Mapping[str, Mapping[str, float]] | None, depth: int,
                      **encoder: Any) -> nn.ModuleDict:
    """One ``ModalityEncoder`` per modality, each with its ``overrides`` applied."""
    per_modality = modality_args(args, overrides, in_chans)
    return nn.ModuleDict({
        modality: ModalityEncoder(modality, chans, img_size, patch_size, per_modality[modality], depth,
                                  **encoder)
        for modality, chans in in_chans.items()})


class DualEncoderViT(ClassTokenViT):
    """Two modality encoders of equal depth stepped layer by layer, their final class tokens
    fused by a linear layer for the head (thesis §5.5, §5.6). Subclasses add their exchange
    between the encoders (``build_fusion``, ``forward_features``)."""

    block_fn: ClassVar[Callable[..., nn.Module]] = Block

    def __init__(
            self,
            in_chans: Mapping[str, int],
            num_classes: int = 19,
            img_size: int = 120,
            patch_size: int = 20,
            depth: int = 8,
            embed_dim: int = 256,
            num_heads: int = 8,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.25,
            norm_layer: Callable[[int], nn.Module] = LayerNorm,
            act_layer: Callable[[], nn.Module] = nn.GELU,
            overrides: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        super().__init__()
        self.in_chans = check_in_chans(self.model_name, in_chans, fusion=True)
        self.num_tokens = 1 + check_patch_size(patch_size, img_size)
        args = EncoderArgs(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                           drop_path_rate, norm_layer, act_layer)
        self.num_classes = num_classes
        self.encoders = modality_encoders(self.in_chans, img_size, patch_size, args, overrides,
                                          positive_int("depth", depth), block_fn=self.block_fn)
        self.build_fusion(args, depth)
        self.fuse_cls = nn.Linear(2 * embed_dim, embed_dim)
        self.head = make_head(embed_dim, num_classes)
        init_weights(self)
        for layer in self.fusion_layers():
            init_mean_fusion(layer)

    def build_fusion(self, args: EncoderArgs, depth: int) -> None:
        """Add the layers that exchange information between the encoders (none by default)."""

    def fusion_layers(self) -> list[nn.Linear]:
        """The 2D → D layers that fuse the two encoders' tokens (they start as the mean)."""
        return [self.fuse_cls]

    def embed(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Both token sequences (s2, s1), class token first."""
        check_inputs(self.model_name, x, self.in_chans)
        a, b = (encoder.tokens(x) for encoder in self.encoders.values())
        return a, b

    def fuse_class_tokens(self, a: Tensor, b: Tensor) -> Tensor:
        """Normalise both sequences, fuse the class tokens linearly: ``[fused cls, a…, b…]``."""
        norm_a, norm_b = (encoder.norm for encoder in self.encoders.values())
        a, b = norm_a(a), norm_b(b)
        cls = self.fuse_cls(torch.cat([a[:, :1], b[:, :1]], dim=-1))
        return torch.cat([cls, a[:, 1:], b[:, 1:]], dim=1)
