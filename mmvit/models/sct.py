"""Synchronised Class Token Fusion (thesis §5.6, Eq. 5.3)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmvit.models._common import DualEncoderViT, EncoderArgs
from mmvit.models._registry import register_model


@register_model("sct")
class SCTFusion(DualEncoderViT):
    """Two modality encoders whose class tokens are synchronised after every layer.

    After each layer the two class tokens are concatenated and mapped back to D by that
    layer's linear fusion (Eq. 5.3, ``z_cls = W [z_s2; z_s1] + b``); the fused token replaces
    the class token of both sequences. After the last layer the encoders' final norms come
    first, then the last fusion (``fuse_cls``), whose token feeds the head: ``depth`` fusion
    layers in all. Tokens: P + 1 in each encoder.
    """

    def build_fusion(self, args: EncoderArgs, depth: int) -> None:
        self.sync = nn.ModuleList(nn.Linear(2 * args.embed_dim, args.embed_dim) for _ in range(depth - 1))

    def fusion_layers(self) -> list[nn.Linear]:
        return [*self.sync, self.fuse_cls]

    def forward_features(self, x: Mapping[str, Tensor]) -> Tensor:
        a, b = self.embed(x)
        blocks_a, blocks_b = (encoder.blocks for encoder in self.encoders.values())
        for block_a, block_b, sync in zip(blocks_a, blocks_b, self.sync):
            a, b = block_a(a), block_b(b)
            cls = sync(torch.cat([a[:, :1], b[:, :1]], dim=-1))
            a, b = torch.cat([cls, a[:, 1:]], dim=1), torch.cat([cls, b[:, 1:]], dim=1)
        return self.fuse_class_tokens(blocks_a[-1](a), blocks_b[-1](b))
