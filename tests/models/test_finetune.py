"""Fine-tuning modes (full, bitfit, lora:R) and trainable prefixes on timm backbones and the built-ins."""

import dataclasses

import pytest
import torch
from torch import nn

from ltcl.config import ModelConfig
from ltcl.models import FINETUNE_MODES, LoRADelta, ParameterCounts, apply_finetune, build_network, parse_finetune
from tests.models.tiny import TINY_VIT

pytest.importorskip("timm")

HEADS = {"projection.0.weight", "projection.0.bias", "projection.2.weight", "projection.2.bias", "classifier.weight",
         "classifier.bias"}  # fmt: skip


def vit(finetune="full", **overrides):
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY_VIT, finetune=finetune, projection_hidden=16, projection_dim=8, **overrides)
    return build_network(cfg, num_classes=4), cfg


def trainable(net: nn.Module) -> set[str]:
    return {n for n, p in net.named_parameters() if p.requires_grad}


def vit_block_names(suffixes, blocks=(0, 1)) -> set[str]:
    return {f"backbone.blocks.{b}.{s}" for b in blocks for s in suffixes}


def sgd_steps(net: nn.Module, steps: int = 5, lr: float = 0.01) -> list[float]:
    """A few SGD steps on one fixed batch; returns the losses."""
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr)
    net.train()
    losses = []
    for _ in range(steps):
        out = net(x)
        # pulls the projections of samples i and i + 4 (same class) together, so the head gets gradients too
        loss = nn.functional.cross_entropy(out.logits, y) - (out.projections[:4] * out.projections[4:]).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_timm_backbones_build_and_forward_at_32px():
    for cfg in (ModelConfig(backbone="timm/resnet18", projection_dim=8), ModelConfig(**TINY_VIT, projection_dim=8)):
        net = build_network(cfg, num_classes=5).eval()
        with torch.no_grad():
            out = net(torch.randn(2, 3, 32, 32))
        dim = 512 if cfg.backbone == "timm/resnet18" else 192
        assert net.feature_dim == dim and out.features.shape == (2, dim)
        assert out.logits.shape == (2, 5) and out.projections.shape == (2, 8)


def test_bitfit_trains_exactly_biases_and_norms():
    net, cfg = vit("bitfit")
    counts = apply_finetune(net, cfg)
    block = {"norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.bias", "attn.proj.bias",
             "mlp.fc1.bias", "mlp.fc2.bias"}  # fmt: skip
    expected = vit_block_names(block) | {"backbone.patch_embed.proj.bias", "backbone.norm.weight", "backbone.norm.bias"}
    assert trainable(net) == expected | HEADS
    assert counts == ParameterCounts(sum(p.numel() for n, p in net.named_parameters() if n in trainable(net)),
                                     sum(p.numel() for p in net.parameters()))  # fmt: skip


def test_lora_trains_exactly_the_factors_of_qkv_proj_fc1_fc2():
    net, cfg = vit("lora:4")
    apply_finetune(net, cfg)
    layers = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    factors = [f"{layer}.parametrizations.weight.0.lora_{ab}" for layer in layers for ab in "ab"]
    assert trainable(net) == vit_block_names(factors) | HEADS
    qkv = net.backbone.blocks[0].attn.qkv
    assert qkv.parametrizations.weight[0].lora_a.shape == (4, 192)
    assert qkv.parametrizations.weight[0].lora_b.shape == (576, 4)


@pytest.mark.parametrize("finetune", ["full", "bitfit", "lora:4"])
def test_sgd_steps_lower_the_loss_and_move_only_trainable_parameters(finetune):
    net, cfg = vit(finetune)
    apply_finetune(net, cfg)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    losses = sgd_steps(net)
    assert losses[-1] < losses[0]
    for name, param in net.named_parameters():
        moved = not torch.equal(param, before[name])
        # (lora_a gets no gradient while lora_b is zero, at the first step only)
        assert moved == param.requires_grad, name


def test_lora_output_equals_the_base_model_at_initialisation():
    net, cfg = vit("lora:8")
    net.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        base = net(x)
    apply_finetune(net, cfg)
    with torch.no_grad():
        adapted = net(x)
    torch.testing.assert_close(adapted.logits, base.logits, rtol=0, atol=0)
    torch.testing.assert_close(adapted.features, base.features, rtol=0, atol=0)


@pytest.mark.parametrize("alpha,scaling", [(0.0, 1.0), (8.0, 2.0)])
def test_lora_weight_is_base_plus_scaled_low_rank_product(alpha, scaling):
    net, cfg = vit("lora:4", lora_alpha=alpha)
    base = net.backbone.blocks[1].mlp.fc1.weight.detach().clone()
    apply_finetune(net, cfg)
    fc1 = net.backbone.blocks[1].mlp.fc1
    delta: LoRADelta = fc1.parametrizations.weight[0]
    assert delta.scaling == scaling
    with torch.no_grad():
        delta.lora_b.normal_()
    expected = base + scaling * delta.lora_b.detach() @ delta.lora_a.detach()
    torch.testing.assert_close(fc1.weight, expected)
    x = torch.randn(5, fc1.in_features)
    torch.testing.assert_close(fc1(x), x @ expected.T + fc1.bias)


def test_trainable_prefixes_restrict_the_mode_and_heads_always_train():
    net, cfg = vit("lora:2", trainable=["backbone.blocks.1"])
    apply_finetune(net, cfg)
    layers = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    factors = [f"{layer}.parametrizations.weight.0.lora_{ab}" for layer in layers for ab in "ab"]
    assert trainable(net) == vit_block_names(factors, blocks=(1,)) | HEADS

    net, cfg = vit("full", trainable=["backbone.norm", "classifier"])  # a probe on the final norm
    apply_finetune(net, cfg)
    assert trainable(net) == {"backbone.norm.weight", "backbone.norm.bias"} | HEADS


def test_bitfit_on_a_conv_net_trains_batchnorm_and_full_prefix_keeps_frozen_bn_in_eval():
    cfg = ModelConfig(backbone="timm/resnet18", finetune="bitfit", projection_dim=0)
    net = build_network(cfg, num_classes=3)
    apply_finetune(net, cfg)
    bns = {n: m for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    backbone_trainable = {n for n in trainable(net) if n.startswith("backbone.")}
    assert backbone_trainable == {f"{n}.{p}" for n in bns for p in ("weight", "bias")}  # ResNet convs have no bias
    net.train()
    assert all(m.training for m in bns.values())

    cfg = ModelConfig(backbone="timm/resnet18", trainable=["backbone.layer4"], projection_dim=0)
    net = build_network(cfg, num_classes=3)
    apply_finetune(net, cfg)
    net.train()
    for name, bn in net.named_modules():
        if isinstance(bn, nn.BatchNorm2d):
            assert bn.training == name.startswith("backbone.layer4."), name


def test_lora_on_a_conv_net_is_refused_and_changes_nothing():
    cfg = ModelConfig(backbone="resnet8", finetune="lora:4")
    net = build_network(cfg, num_classes=3)
    names = [n for n, _ in net.named_parameters()]
    with pytest.raises(ValueError, match=r"lora:4 adapts linear layers.*convolutional") as info:
        apply_finetune(net, cfg)
    assert len(str(info.value).splitlines()) == 1
    assert [n for n, _ in net.named_parameters()] == names and all(p.requires_grad for p in net.parameters())


def test_full_mode_with_prefixes_trains_those_prefixes_and_the_heads():
    cfg = ModelConfig(backbone="resnet8", projection_dim=0, trainable=["backbone.layer3", "projection", "classifier"])
    net = build_network(cfg, num_classes=3)
    counts = apply_finetune(net, cfg)  # no projection head: the prefix "projection" is still fine
    expected = sum(p.numel() for n, p in net.named_parameters() if n.startswith(("backbone.layer3.", "classifier.")))
    assert counts.trainable == expected < counts.total
    plain = build_network(ModelConfig(backbone="resnet8"), num_classes=3)
    full = apply_finetune(plain, ModelConfig(backbone="resnet8"))
    assert full.trainable == full.total


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"finetune": "lora:0"}, "model.finetune"),
        ({"finetune": "prefix"}, "model.finetune"),
        ({"lora_alpha": -1.0, "finetune": "lora:2"}, "model.lora_alpha"),
        ({"trainable": ["backbone.blocks.7"]}, "backbone.blocks.7"),
    ],
)
def test_bad_finetune_values_are_one_sentence_errors(overrides, match):
    net, cfg = vit()
    cfg = dataclasses.replace(cfg, **overrides)
    with pytest.raises(ValueError, match=match) as info:
        apply_finetune(net, cfg)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")
    assert all(p.requires_grad for p in net.parameters())


def test_parse_finetune_reads_the_registered_modes():
    modes = FINETUNE_MODES
    assert parse_finetune("full") == (modes.get("full"), 0) and parse_finetune("bitfit") == (modes.get("bitfit"), 0)
    assert parse_finetune("lora:16") == (modes.get("lora"), 16)
    for bad, message in (("lora", "takes a rank R >= 1"), ("bitfit:2", "takes no argument"), ("lorra:4", "lora")):
        with pytest.raises(ValueError, match=message):
            parse_finetune(bad)
