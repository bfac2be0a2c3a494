"""Model zoo: the single-modality ViT and the six fusion models of the thesis (ch. 5).

``create_model("sct", in_chans={"s2": 10, "s1": 2})`` → ``model({"s2": …, "s1": …})`` gives
logits (B, 19). Importing the model modules registers them, in the thesis's order.
"""

from mmvit.models._registry import check_settings, create_model, hyperparameters, list_models, register_model
from mmvit.models import vit, early, token, channel, middle, cross_attention, sct  # noqa: E402,F401,I001

__all__ = ["check_settings", "create_model", "hyperparameters", "list_models", "register_model"]
