"""Channel Token Fusion (thesis §5.3): one token per channel per patch."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from mmvit.models._common import SingleEncoderViT, channels
from mmvit.models._registry import register_model


class ChannelTokens(nn.Module):
    """Each channel's p×p patches embedded by that channel's own filters (a grouped conv).

    The filters hold C·p²·D weights plus one shared bias of D: exactly early fusion's
    ``PatchEmbed`` (thesis: "the same number of parameters"). Position: a spatial embedding
    shared by all channels plus a learned channel embedding, so a token knows both where it
    is and which band it comes from. Token order: channel-major, s2 bands then s1 bands.
    """

    def __init__(self, keys: tuple[str, ...], in_chans: int, img_size: int, patch_size: int,
                 embed_dim: int) -> None:
        super().__init__()
        self.keys = keys
        self.in_chans, self.embed_dim = in_chans, embed_dim
        num_patches = (img_size // patch_size) ** 2
        self.num_tokens = in_chans * num_patches
        self.proj = nn.Conv2d(in_chans, in_chans * embed_dim, kernel_size=patch_size, stride=patch_size,
                              groups=in_chans, bias=False)
        self.bias = nn.Parameter(torch.zeros(embed_dim))
        self.pos_embed = nn.Parameter(torch.empty(1, 1, num_patches, embed_dim))
        self.chan_embed = nn.Parameter(torch.empty(1, in_chans, 1, embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.chan_embed, std=0.02)

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        tokens = self.proj(channels(x, self.keys)).flatten(2)  # (B, C·D, P)
        tokens = tokens.unflatten(1, (self.in_chans, self.embed_dim)).transpose(2, 3)  # (B, C, P, D)
        return (tokens + (self.bias + self.pos_embed + self.chan_embed)).flatten(1, 2)


@register_model("channel_token")
class ChannelTokenFusion(SingleEncoderViT):
    """A ViT over one token per channel and patch of both modalities. Tokens: (c1 + c2)·P + 1."""

    def tokenizers(self, in_chans: dict[str, int], img_size: int, patch_size: int,
                   embed_dim: int) -> list[nn.Module]:
        return [ChannelTokens(tuple(in_chans), sum(in_chans.values()), img_size, patch_size, embed_dim)]
