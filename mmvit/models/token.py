"""Modality Token Fusion (thesis §5.2): separate patch embeddings, one token sequence."""

from __future__ import annotations

from torch import nn

from mmvit.models._common import PatchTokens, SingleEncoderViT
from mmvit.models._registry import register_model


@register_model("modality_token")
class ModalityTokenFusion(SingleEncoderViT):
    """One ``PatchEmbed`` per modality; the two token sequences are concatenated (class token,
    s2 tokens, s1 tokens) so that all fusion happens in attention. Tokens: 2P + 1.

    Each modality's tokens are made "with the same process as §3.2", so each has its own
    learned position embedding; being distinct per modality, it also tells the modalities
    apart, and no separate modality embedding is added.
    """

    def tokenizers(self, in_chans: dict[str, int], img_size: int, patch_size: int,
                   embed_dim: int) -> list[nn.Module]:
        return [PatchTokens((modality,), chans, img_size, patch_size, embed_dim)
                for modality, chans in in_chans.items()]
