"""The model zoo (thesis ch. 5): shapes, token counts, the fusion mechanics, errors.

Small configurations throughout (patch 40 → P = 9 patches, depth 2, dim 32) so the file runs
in seconds on a laptop CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmvit.errors import SpecError
from mmvit.models import create_model, hyperparameters, list_models

SMALL = dict(patch_size=40, depth=2, embed_dim=32, num_heads=4, drop_path_rate=0.0)
MIDDLE_SMALL = dict(patch_size=40, modality_depth=1, fusion_depth=1, embed_dim=32, num_heads=4,
                    drop_path_rate=0.0)
P = (120 // 40) ** 2
FUSION = ["early", "modality_token", "channel_token", "middle", "cross_attention", "sct"]
DUAL = ["middle", "cross_attention", "sct"]
MODALITY_SETS = {"s2+s1": {"s2": 10, "s1": 2}, "rgb+s1": {"s2": 3, "s1": 2}}
SINGLE_SETS = {"s2": {"s2": 10}, "s1": {"s1": 2}, "rgb": {"s2": 3}}


def small(name: str, in_chans: dict[str, int] | None = None, **hparams) -> nn.Module:
    config = MIDDLE_SMALL if name == "middle" else SMALL
    torch.manual_seed(0)
    return create_model(name, in_chans=in_chans, **{**config, **hparams})


def batch(in_chans: dict[str, int], size: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(size, chans, 120, 120, generator=generator) for key, chans in in_chans.items()}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def thesis_size(name: str, **hparams) -> nn.Module:
    """A thesis-default model without memory or init time (on the meta device)."""
    with torch.device("meta"):
        return create_model(name, **hparams)


def test_registry_lists_the_thesis_models_in_order():
    assert list_models() == ["vit", *FUSION]


@pytest.mark.parametrize("modalities", MODALITY_SETS)
@pytest.mark.parametrize("name", FUSION)
def test_fusion_models_give_logits(name, modalities):
    in_chans = MODALITY_SETS[modalities]
    model = small(name, in_chans).eval()
    x = batch(in_chans)
    assert model(x).shape == (2, 19)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 32)


@pytest.mark.parametrize("modality", SINGLE_SETS)
def test_vit_on_one_modality(modality):
    in_chans = SINGLE_SETS[modality]
    model = small("vit", in_chans).eval()
    assert model(batch(in_chans)).shape == (2, 19)
    assert model.num_tokens == P + 1


@pytest.mark.parametrize(("name", "tokens", "features"), [
    ("early", P + 1, P + 1),
    ("modality_token", 2 * P + 1, 2 * P + 1),
    ("channel_token", 12 * P + 1, 12 * P + 1),
    ("middle", P + 1, P + 1),
    ("cross_attention", P + 1, 2 * P + 1),  # per encoder; features: fused class token + both
    ("sct", P + 1, 2 * P + 1),
])
def test_token_counts(name, tokens, features):
    model = small(name).eval()
    assert model.num_tokens == tokens
    assert model.forward_features(batch({"s2": 10, "s1": 2})).shape == (2, features, 32)


def test_channel_token_patch_embedding_has_early_fusions_parameter_count():
    early, channel = small("early"), small("channel_token")
    early_proj = early.tokens.parts[0].patch_embed.proj
    channel_tokens = channel.tokens.parts[0]
    assert channel_tokens.proj.weight.numel() == early_proj.weight.numel() == 12 * 40 * 40 * 32
    assert channel_tokens.bias.numel() == early_proj.bias.numel() == 32


def test_early_fusion_is_timms_vision_transformer():
    """Same weights → same logits as timm's VisionTransformer on the concatenated channels."""
    from timm.models.vision_transformer import VisionTransformer

    ours = small("early").eval()
    timm_vit = VisionTransformer(img_size=120, patch_size=40, in_chans=12, num_classes=19, embed_dim=32,
                                 depth=2, num_heads=4, no_embed_class=True).eval()
    renamed = {key.replace("tokens.parts.0.", "").replace("tokens.", ""): value
               for key, value in ours.state_dict().items()}
    timm_vit.load_state_dict(renamed)
    x = batch({"s2": 10, "s1": 2})
    expected = timm_vit(torch.cat([x["s2"], x["s1"]], dim=1))
    torch.testing.assert_close(ours(x), expected)


def test_early_fusion_gradients_equal_those_through_the_concatenated_channels():
    """The patch projection runs per input with its filter slice (no concatenated copy): the
    filters, bias and every later parameter get the gradients of the concatenated projection."""
    from timm.models.vision_transformer import VisionTransformer

    ours = small("early").train()
    timm_vit = VisionTransformer(img_size=120, patch_size=40, in_chans=12, num_classes=19, embed_dim=32,
                                 depth=2, num_heads=4, no_embed_class=True, drop_path_rate=0.0).train()
    timm_vit.load_state_dict({key.replace("tokens.parts.0.", "").replace("tokens.", ""): value
                              for key, value in ours.state_dict().items()})
    for module in ours.modules():  # no stochastic depth: the two sides must draw nothing
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    x = batch({"s2": 10, "s1": 2})
    ours(x).square().sum().backward()
    timm_vit(torch.cat([x["s2"], x["s1"]], dim=1)).square().sum().backward()
    ours_grads = {key.replace("tokens.parts.0.", "").replace("tokens.", ""): p.grad
                  for key, p in ours.named_parameters()}
    for key, p in timm_vit.named_parameters():
        torch.testing.assert_close(ours_grads[key], p.grad, rtol=1e-4, atol=1e-6, msg=key)


def test_early_fusion_refuses_an_image_of_another_size():
    model = small("early")
    x = {"s2": torch.randn(2, 10, 80, 80), "s1": torch.randn(2, 2, 80, 80)}
    with pytest.raises(ValueError, match=r"input size \(80, 80\) does not match the model's \(120, 120\)"):
        model(x)


@pytest.mark.parametrize("name", ["cross_attention", "sct"])
def test_dual_encoders_are_two_single_modality_vits(name):
    """Each encoder has a single-modality ViT's parameters (less its head): about 2× in all."""
    model = small(name)
    for modality, chans in model.in_chans.items():
        vit = small("vit", {modality: chans})
        assert n_params(model.encoders[modality]) == n_params(vit) - n_params(vit.head)
    thesis, vit_s2 = thesis_size(name), thesis_size("vit", in_chans={"s2": 10})
    assert 1.9 < n_params(thesis) / n_params(vit_s2) < 2.1


def test_middle_fusion_encoders_and_parameters():
    model = small("middle")
    assert [len(encoder.blocks) for encoder in model.encoders.values()] == [1, 1]
    assert len(model.blocks) == 1
    thesis, vit_s2 = thesis_size("middle"), thesis_size("vit", in_chans={"s2": 10})
    assert 1.65 < n_params(thesis) / n_params(vit_s2) < 1.8  # (6 + 6 + 2) / 8 blocks


def test_middle_fusion_stochastic_depth_ramps_over_the_whole_path():
    model = thesis_size("middle", drop_path_rate=0.7, modality_depth=3, fusion_depth=5)
    rates = [block.drop_path1.drop_prob if hasattr(block.drop_path1, "drop_prob") else 0.0
             for block in [*model.encoders["s2"].blocks, *model.blocks]]
    assert rates == pytest.approx([0.7 * i / 7 for i in range(8)])


def test_sct_class_tokens_are_identical_in_both_encoders_after_each_synchronisation():
    model = small("sct", depth=3).eval()
    seen: dict[tuple[str, int], torch.Tensor] = {}
    for modality, encoder in model.encoders.items():
        for index, block in enumerate(encoder.blocks):
            block.register_forward_pre_hook(
                lambda _, args, key=(modality, index): seen.__setitem__(key, args[0][:, 0].clone()))
    model(batch({"s2": 10, "s1": 2}))
    assert not torch.equal(seen["s2", 0], seen["s1", 0])  # own class tokens before the first layer
    for index in (1, 2):
        torch.testing.assert_close(seen["s2", index], seen["s1", index], rtol=0, atol=0)
        assert not torch.equal(seen["s2", index], seen["s2", index - 1])


def _capture(module: nn.Module, store: dict[str, torch.Tensor], key: str) -> None:
    module.register_forward_hook(lambda _, __, output: store.__setitem__(key, output.detach().clone()))


def test_cross_attention_other_modality_acts_only_through_the_queries():
    """Eq. 5.1: Attention(Q_s1, K_s2, V_s2). Changing S1 leaves S2's keys and values as they are
    but changes S2's output; with S1's queries zeroed, S2's output no longer depends on S1."""
    model = small("cross_attention", depth=1).eval()
    block_s2, block_s1 = model.encoders["s2"].blocks[0], model.encoders["s1"].blocks[0]
    seen: dict[str, torch.Tensor] = {}
    _capture(block_s2.attn.qkv, seen, "qkv")
    _capture(block_s2.attn.proj, seen, "out")
    x = batch({"s2": 10, "s1": 2})
    changed = {"s2": x["s2"], "s1": x["s1"] + 1.0}

    model(x)
    qkv, out = seen["qkv"], seen["out"]
    model(changed)
    torch.testing.assert_close(seen["qkv"], qkv, rtol=0, atol=0)
    assert not torch.allclose(seen["out"], out)

    with torch.no_grad():
        block_s1.attn.qkv.weight[:32].zero_()
        block_s1.attn.qkv.bias[:32].zero_()
    model(x)
    out = seen["out"]
    model(changed)
    torch.testing.assert_close(seen["out"], out)


def test_cross_attention_matches_the_equation():
    """softmax(Q_other K_own^T / sqrt(d_h)) V_own, then the output projection."""
    block = small("cross_attention").encoders["s2"].blocks[0].eval()
    attn = block.attn
    q, k, v = (torch.randn(2, 4, P + 1, 8) for _ in range(3))
    expected = torch.softmax(q @ k.transpose(-2, -1) / 8 ** 0.5, dim=-1) @ v
    expected = attn.proj(expected.transpose(1, 2).reshape(2, P + 1, 32))
    torch.testing.assert_close(attn.attend(q, k, v), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["vit", *FUSION])
def test_every_parameter_gets_a_gradient(name):
    in_chans = {"s2": 10} if name == "vit" else {"s2": 10, "s1": 2}
    model = small(name, in_chans).train()
    loss = nn.functional.binary_cross_entropy_with_logits(model(batch(in_chans)), torch.rand(2, 19))
    loss.backward()
    missing = [key for key, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", ["early", "middle", "sct", "cross_attention"])
def test_drop_path_is_random_in_training_and_off_in_eval(name):
    model = small(name, drop_path_rate=0.9)
    x = batch({"s2": 10, "s1": 2}, size=4)
    model.train()
    outputs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        outputs.append(model(x))
    assert not torch.allclose(*outputs)
    model.eval()
    torch.manual_seed(0)
    first = model(x)
    torch.manual_seed(1)
    torch.testing.assert_close(model(x), first, rtol=0, atol=0)


def test_drop_path_rates_rise_linearly_and_zero_rate_is_identity():
    model = thesis_size("early", drop_path_rate=0.25, depth=8)
    assert isinstance(model.blocks[0].drop_path1, nn.Identity)
    rates = [block.drop_path1.drop_prob for block in model.blocks[1:]]
    assert rates == pytest.approx([0.25 * i / 7 for i in range(1, 8)])
    assert all(isinstance(b.drop_path1, nn.Identity) for b in small("early").blocks)


def _dropout_rates(module: nn.Module) -> set[float]:
    return {m.p for name, m in module.named_modules()
            if isinstance(m, nn.Dropout) and not name.endswith("attn_drop")}


@pytest.mark.parametrize("name", DUAL)
def test_overrides_change_only_the_named_encoder(name):
    model = small(name, overrides={"s2": {"drop_rate": 0.1, "attn_drop_rate": 0.2}})
    assert _dropout_rates(model.encoders["s2"]) == {0.1}
    assert {m.p for n, m in model.encoders["s2"].named_modules() if n.endswith("attn_drop")} == {0.2}
    assert {m.p for m in model.encoders["s1"].modules() if isinstance(m, nn.Dropout)} == {0.0}
    if name == "middle":
        assert _dropout_rates(model.blocks) == {0.0}


def test_overridden_drop_path_rate():
    model = small("sct", drop_path_rate=0.2, overrides={"s1": {"drop_path_rate": 0.4}})
    assert model.encoders["s2"].blocks[1].drop_path1.drop_prob == pytest.approx(0.2)
    assert model.encoders["s1"].blocks[1].drop_path1.drop_prob == pytest.approx(0.4)


def test_trial_config_hyperparameters_build_every_model():
    """The train loop passes every ModelConfig field to every model."""
    from mmvit.config import ModelConfig

    hparams = ModelConfig(patch_size=40, embed_dim=32, num_heads=4).model_dump(exclude={"fusion"})
    for name in list_models():
        in_chans = {"s2": 10} if name == "vit" else None
        assert create_model(name, in_chans=in_chans, **hparams).num_classes == 19


def test_defaults_are_the_thesis_table_7_1():
    for name in ["vit", "early", "sct"]:
        params = hyperparameters(name)
        assert [params[key] for key in ("patch_size", "depth", "embed_dim", "num_heads")] == [20, 8, 256, 8]
        assert (params["drop_path_rate"], params["drop_rate"]) == (0.25, 0.0)
    assert (hyperparameters("middle")["modality_depth"], hyperparameters("middle")["fusion_depth"]) == (6, 2)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: create_model("scct"), r"model must be one of vit, early, .*; did you mean 'sct'\?"),
    (lambda: create_model("sct", patch_size=16),
     r"patch_size must divide img_size \(120\).*valid 4, 5, 6, 8, 10, 12, 15, 20, 24, 30, 40, 60, 120; "
     r"got 16"),
    (lambda: create_model("sct", embed_dim=250),
     r"embed_dim must be divisible by num_heads, but got embed_dim=250, num_heads=8"),
    (lambda: create_model("sct", in_chans={"s2": 10}),
     r"fusion model 'sct' needs two modalities \('s2' and 's1'\), but got in_chans=\{'s2': 10\}"),
    (lambda: create_model("early", in_chans={"s1": 2}), r"fusion model 'early' needs two modalities"),
    (lambda: create_model("vit", in_chans={"s2": 10, "s1": 2}),
     r"model 'vit' takes one modality .*but got in_chans=\{'s2': 10, 's1': 2\}"),
    (lambda: create_model("vit", in_chans={"rgb": 3}), r"in_chans keys must be 's2' or 's1' \(RGB is"),
    (lambda: create_model("vit", in_chans={"s2": 0}), r"in_chans\['s2'\] must be a positive integer"),
    (lambda: create_model("sct", overrides={"rgb": {"drop_rate": 0.1}}),
     r"overrides must name a modality of the model \('s2', 's1'\), but got 'rgb'"),
    (lambda: create_model("middle", overrides={"s2": {"depth": 3}}),
     r"overrides may set drop_rate, attn_drop_rate, drop_path_rate per modality, but got 'depth' for 's2'"),
    (lambda: create_model("sct", overrides={"s2": {"drop_rate": 1.5}}), r"drop_rate must lie in \[0, 1\)"),
    (lambda: create_model("sct", overrides={"s2": 0.1}),
     r"overrides must map a modality to hyper-parameters"),
    (lambda: create_model("early", overrides={"s2": {"drop_rate": 0.1}}),
     r"'overrides' is a hyper-parameter of middle, cross_attention, sct, not of 'early'"),
    (lambda: create_model("sct", modality_depth=4),
     r"'modality_depth' is a hyper-parameter of middle, not of 'sct'"),
    (lambda: create_model("middle", depth=4), r"'depth' is a hyper-parameter of .*not of 'middle'"),
    (lambda: create_model("sct", dpeth=4), r"hyper-parameters must be among .*; did you mean 'depth'\?"),
    (lambda: create_model("sct", depth=0), r"depth must be a positive integer, but got depth=0"),
    (lambda: create_model("middle", fusion_depth=0), r"fusion_depth must be a positive integer"),
    (lambda: create_model("early", drop_path_rate=1.0),
     r"drop_path_rate must lie in \[0, 1\), but got drop_path_rate=1.0"),
])
def test_errors_state_the_rule_and_the_value(call, message):
    with pytest.raises(SpecError, match=message):
        call()


def test_other_models_hyperparameters_are_accepted_at_their_defaults():
    assert create_model("sct", modality_depth=6, fusion_depth=2, overrides={}, **SMALL) is not None
    assert create_model("middle", depth=8, **MIDDLE_SMALL) is not None


@pytest.mark.parametrize("name", ["early", "sct"])
def test_missing_input_is_a_clear_error(name):
    model = small(name)
    expected = rf"model '{name}' expects inputs with channels \{{'s2': 10, 's1': 2\}}.*got shapes \{{'s2'"
    with pytest.raises(ValueError, match=expected):
        model(batch({"s2": 10}))
    with pytest.raises(ValueError, match="expects inputs with channels"):
        model(batch({"s2": 3, "s1": 2}))


def test_model_benchmark_runs_and_tabulates():
    from mmvit.bench.models import BenchConfig, run_model_benchmark, summary

    tiny = BenchConfig("tiny", patch_size=60, depth=1, embed_dim=16, num_heads=2, modality_depth=1,
                       fusion_depth=1)
    rows = run_model_benchmark(configs=[tiny], batch_size=2, steps=1, warmup=1, rounds=1, device="cpu",
                               models=["early", "middle"])
    assert [row.model for row in rows] == ["timm ViT (baseline)", "early", "middle"]
    assert all(row.samples_per_s > 0 and row.ratio > 0 for row in rows)
    assert rows[1].equivalent == "ViT(12 ch, depth 1)" and rows[1].tokens == 5
    assert "ViT(10 ch, depth 1) + ViT(2 ch, depth 1) + ViT(1 ch, depth 1)" in summary(rows)


@pytest.mark.parametrize("name", ["sct", "cross_attention", "middle"])
def test_fusion_layers_start_as_the_mean_of_both_modalities(name):
    """With timm's std-.02 init each fusion layer shrank its token about four-fold (SCT: at every
    layer); they start as the mean so both encoders' features reach the head at their scale."""
    torch.manual_seed(0)
    depths = {"modality_depth": 1, "fusion_depth": 1} if name == "middle" else {"depth": 2}
    model = create_model(name, in_chans={"s2": 10, "s1": 2}, embed_dim=32, num_heads=2, **depths)
    layers = [m for n, m in model.named_modules() if n.startswith(("sync", "fuse")) and isinstance(m, nn.Linear)]
    assert len(layers) == {"sct": 2, "cross_attention": 1, "middle": 2}[name]  # SCT: depth - 1 syncs + fuse_cls
    a, b = torch.randn(4, 32), torch.randn(4, 32)
    for layer in layers:
        assert torch.allclose(layer(torch.cat([a, b], dim=-1)), (a + b) / 2, atol=1e-6)
