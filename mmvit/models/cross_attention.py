"""Cross-Attention Fusion (thesis §5.5, Eq. 5.1/5.2): each encoder attends with the other's queries."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch.nn.functional as F
from timm.layers import Attention, DropPath, LayerNorm, Mlp
from torch import Tensor, nn

from mmvit.models._common import DualEncoderViT
from mmvit.models._registry import register_model


class CrossAttention(Attention):
    """timm's ``Attention`` split in two steps so that the queries can come from elsewhere:
    ``project`` gives this sequence's q, k, v; ``attend`` runs fused attention
    (``F.scaled_dot_product_attention``) on any q with this sequence's k, v, then the output
    projection. Same parameters as timm's."""

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, length, _ = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).flatten(2)
        return self.proj_drop(self.proj(x))


class CrossBlock(nn.Module):
    """timm's pre-norm ``Block`` with ``CrossAttention`` (same parameters): the attention
    step takes the other encoder's queries, the MLP step is unchanged."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = False,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: float = 0.0,
            act_layer: Callable[[], nn.Module] = nn.GELU,
            norm_layer: Callable[[int], nn.Module] = LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = CrossAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                   proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer,
                       drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """This sequence's queries (for the other encoder), keys and values."""
        return self.attn.project(self.norm1(x))

    def forward(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``x`` updated by Attention(q from the other encoder, k and v from ``x``), then the MLP."""
        x = x + self.drop_path1(self.attn.attend(q, k, v))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


@register_model("cross_attention")
class CrossAttentionFusion(DualEncoderViT):
    """Two modality encoders of ``CrossBlock``s: in every layer, encoder s2 computes
    Attention(Q_s1, K_s2, V_s2) and encoder s1 Attention(Q_s2, K_s1, V_s1) (Eq. 5.1/5.2), so
    the other modality only weighs which of this modality's features pass. Both sequences
    must be equally long: one patch grid for both. After the final norms the two class tokens
    are fused by a linear layer (2D → D) for the head. Tokens: P + 1 in each encoder.
    """

    block_fn = CrossBlock

    def forward_features(self, x: Mapping[str, Tensor]) -> Tensor:
        a, b = self.embed(x)
        for block_a, block_b in zip(*(encoder.blocks for encoder in self.encoders.values())):
            q_a, k_a, v_a = block_a.project(a)
            q_b, k_b, v_b = block_b.project(b)
            a, b = block_a(a, q_b, k_a, v_a), block_b(b, q_a, k_b, v_b)
        return self.fuse_class_tokens(a, b)
