"""Early Fusion (thesis §5.1): the modalities' channels concatenated into one image."""

from __future__ import annotations

from mmvit.models._registry import register_model
from mmvit.models.vit import ViT


@register_model("early")
class EarlyFusion(ViT):
    """A ViT on the channel concatenation (s2 then s1): one ``PatchEmbed`` over c1 + c2
    channels, so fusion happens in its filters and in attention. Tokens: P + 1."""

    fusion = True
