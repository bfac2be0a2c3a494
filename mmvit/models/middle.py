"""Middle Fusion (thesis §5.4): modality encoders, a fusion layer, a fusion encoder."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from timm.layers import LayerNorm
from torch import Tensor, nn

from mmvit.models._common import (
    ClassTokenViT, EncoderArgs, check_in_chans, check_inputs, check_patch_size, init_mean_fusion,
    init_weights, make_head, modality_encoders, positive_int,
)
from mmvit.models._registry import register_model


@register_model("middle")
class MiddleFusion(ClassTokenViT):
    """Two modality encoders (``modality_depth``), a fusion layer, a fusion encoder
    (``fusion_depth``), the head on its class token. Tokens: P + 1 in every encoder.

    The fusion layer fuses patch tokens and class tokens separately, each by a linear layer
    on the two modalities' tokens concatenated along the feature dimension (2D → D): the
    patch tokens position by position (both encoders see the same patch grid), so the fused
    sequence is as long as each input one (thesis: "halves the total capacity"). Each modality
    encoder ends with its final norm, as a ViT encoder does, so that the fusion layer sees both
    modalities at the same scale. The stochastic-depth ramp runs over the whole path,
    modality blocks then fusion blocks (modality_depth + fusion_depth rates).
    """

    def __init__(
            self,
            in_chans: Mapping[str, int],
            num_classes: int = 19,
            img_size: int = 120,
            patch_size: int = 20,
            modality_depth: int = 6,
            fusion_depth: int = 2,
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
        total = positive_int("modality_depth", modality_depth) + positive_int("fusion_depth", fusion_depth)
        self.num_classes = num_classes
        self.encoders = modality_encoders(self.in_chans, img_size, patch_size, args, overrides,
                                          modality_depth, total_depth=total)
        self.fuse_tokens = nn.Linear(2 * embed_dim, embed_dim)
        self.fuse_cls = nn.Linear(2 * embed_dim, embed_dim)
        self.blocks = args.blocks(fusion_depth, first=modality_depth, total=total)
        self.norm = norm_layer(embed_dim)
        self.head = make_head(embed_dim, num_classes)
        init_weights(self)
        init_mean_fusion(self.fuse_tokens)
        init_mean_fusion(self.fuse_cls)

    def forward_features(self, x: Mapping[str, Tensor]) -> Tensor:
        check_inputs(self.model_name, x, self.in_chans)
        a, b = (encoder.norm(encoder.blocks(encoder.tokens(x))) for encoder in self.encoders.values())
        cls = self.fuse_cls(torch.cat([a[:, :1], b[:, :1]], dim=-1))
        tokens = self.fuse_tokens(torch.cat([a[:, 1:], b[:, 1:]], dim=-1))
        return self.norm(self.blocks(torch.cat([cls, tokens], dim=1)))
