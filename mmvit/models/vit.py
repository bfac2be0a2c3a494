"""Single-modality ViT (thesis §3.2, §7.1): the baseline on S2, S1 or RGB alone."""

from __future__ import annotations

from torch import nn

from mmvit.models._common import PatchTokens, SingleEncoderViT
from mmvit.models._registry import register_model


@register_model("vit")
class ViT(SingleEncoderViT):
    """timm-style ViT on one input (``in_chans={"s2": 10}``, ``{"s1": 2}`` or ``{"s2": 3}``).

    Tokens: P + 1 (patches and the class token).
    """

    fusion = False

    def tokenizers(self, in_chans: dict[str, int], img_size: int, patch_size: int,
                   embed_dim: int) -> list[nn.Module]:
        return [PatchTokens(tuple(in_chans), sum(in_chans.values()), img_size, patch_size, embed_dim)]
