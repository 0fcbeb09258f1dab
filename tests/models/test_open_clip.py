"""OpenCLIP image towers: build, zero-shot head from class names, LoRA on nn.MultiheadAttention, input specs."""

import pytest
import torch
import torch.nn.functional as F

from ltcl.config import ModelConfig
from ltcl.models import InputSpec, apply_finetune, build_network, input_spec
from tests.models.tiny import TINY_CLIP_KWARGS

open_clip = pytest.importorskip("open_clip")

NAMES = ["cat", "aquarium_fish", "dog"]


def clip_cfg(**overrides) -> ModelConfig:
    base = {"backbone": "open_clip/ViT-B-32", "backbone_kwargs": TINY_CLIP_KWARGS, "classifier": "cosine"}
    return ModelConfig(**{**base, **overrides})


def test_random_init_tower_builds_and_returns_the_joint_embedding(no_network):
    net = build_network(clip_cfg(projection_dim=8), num_classes=3).eval()
    assert type(net.backbone).__name__ == "VisionTransformer" and net.feature_dim == 16
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert out.features.shape == (2, 16) and out.logits.shape == (2, 3) and out.projections.shape == (2, 8)


def test_zero_shot_head_is_the_normalised_text_embeddings_and_the_text_tower_is_gone(no_network):
    torch.manual_seed(0)
    net = build_network(clip_cfg(zero_shot_head=True), num_classes=3, class_names=NAMES)
    torch.manual_seed(0)  # the same random CLIP model, built by open_clip itself
    reference = open_clip.create_model("ViT-B-32", **TINY_CLIP_KWARGS).eval()
    tokens = open_clip.get_tokenizer("ViT-B-32")(
        ["a photo of a cat.", "a photo of a aquarium fish.", "a photo of a dog."]
    )
    with torch.no_grad():
        expected = F.normalize(reference.encode_text(tokens), dim=1)
    torch.testing.assert_close(net.classifier.weight.detach(), expected)
    torch.testing.assert_close(net.backbone.conv1.weight, reference.visual.conv1.weight, rtol=0, atol=0)
    # only the image tower stays: no text transformer, token embedding or text projection
    assert sum(p.numel() for p in net.backbone.parameters()) == sum(p.numel() for p in reference.visual.parameters())
    assert not any("token_embedding" in n or "text_projection" in n for n, _ in net.named_parameters())
    assert net.training  # the text pass in eval mode leaves the tower as built


@pytest.mark.parametrize(
    "overrides,names,match",
    [
        ({"zero_shot_head": True, "classifier": "linear"}, NAMES, "classifier cosine"),
        ({"zero_shot_head": True}, None, "needs the 3 class names, got none"),
        ({"zero_shot_head": True}, NAMES[:2], "needs the 3 class names, got 2"),
        ({"backbone": "open_clip/ViT-B-33"}, None, "no architecture 'ViT-B-33'.*ViT-B-32"),
        ({"pretrained": True}, None, "must be one of its tags.*laion2b_s34b_b79k"),
        ({"pretrained": "openai"}, None, "QuickGELU.*open_clip/ViT-B-32-quickgelu"),
        ({"backbone_kwargs": {"bogus": 1}}, None, "backbone_kwargs.*bogus"),
    ],
)
def test_bad_open_clip_values_are_one_sentence_errors(overrides, names, match, no_network):
    with pytest.raises(ValueError, match=match) as info:
        build_network(clip_cfg(**overrides), num_classes=3, class_names=names)
    assert "\n" not in str(info.value) and str(info.value).endswith(".")


def test_lora_adapts_the_attention_and_mlp_of_the_tower_and_every_factor_gets_a_gradient():
    cfg = clip_cfg(finetune="lora:2", projection_dim=0)
    net = build_network(cfg, num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        base = net(x).logits
    apply_finetune(net, cfg)
    with torch.no_grad():
        torch.testing.assert_close(net(x).logits, base, rtol=0, atol=0)
    block = "backbone.transformer.resblocks.0"
    weights = ("attn.parametrizations.in_proj_weight", "attn.out_proj.parametrizations.weight",
               "mlp.c_fc.parametrizations.weight", "mlp.c_proj.parametrizations.weight")  # fmt: skip
    factors = {f"{block}.{w}.0.lora_{ab}" for w in weights for ab in "ab"}
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == factors | {"classifier.weight"}
    net.train()
    net(x).logits.square().sum().backward()
    # the functional attention kernel reads the parametrized weights, so the B factors all get gradients
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters() if n.endswith("lora_b"))


def test_whole_clip_checkpoint_feeds_the_tower_through_model_weights(tmp_path):
    torch.manual_seed(4)
    source = open_clip.create_model("ViT-B-32", **TINY_CLIP_KWARGS)
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "clip.pt")  # both towers, as training saves
    net = build_network(clip_cfg(weights=str(tmp_path / "clip.pt")), num_classes=3)
    for key, value in net.backbone.state_dict().items():
        torch.testing.assert_close(value, source.visual.state_dict()[key], rtol=0, atol=0, msg=key)


def test_input_spec_from_the_arch_and_tag_configs_without_network(no_network):
    openai = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    assert input_spec(ModelConfig(backbone="open_clip/ViT-B-32")) == InputSpec(224, *openai, True, "force_image_size")
    siglip = input_spec(ModelConfig(backbone="open_clip/ViT-B-16-SigLIP-256", pretrained="webli"))
    assert siglip == InputSpec(256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True, "force_image_size")
    assert input_spec(clip_cfg()).size == 32
    resized = ModelConfig(backbone="open_clip/ViT-B-16", backbone_kwargs={"force_image_size": 336})
    assert input_spec(resized).size == 336
