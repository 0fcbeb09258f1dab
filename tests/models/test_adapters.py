"""The adapter fine-tuning modes (adaptformer, vpt_shallow:N, vpt_deep:N, ssf) on tiny random timm and OpenCLIP
ViTs: the start equals the backbone (AdaptFormer, SSF), VPT's tokens, what trains, saving and loading, copies,
refusals, the zero-shot head, and a run through the command line that resumes."""

import copy
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ltcl.cli.methods import registered
from ltcl.config import ModelConfig
from ltcl.models import FINETUNE_MODES, apply_finetune, build_network, parse_finetune
from ltcl.models.adapters import AdaptFormerBranch, ScaleShift, VisualPrompts, find_vit, lift_bottleneck
from tests.models.test_finetune import sgd_steps
from tests.models.tiny import TINY_CLIP_KWARGS, TINY_VIT

pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")

TIMM = dict(TINY_VIT)
CLIP = {"backbone": "open_clip/ViT-B-32", "backbone_kwargs": TINY_CLIP_KWARGS}
FAMILIES = {"timm": TIMM, "open_clip": CLIP}
# adaptformer with 8 units: the default's 2 ReLU units can be dead for every token of a random 1-block tower
MODES = ["adaptformer:8", "vpt_shallow:3", "vpt_deep:3", "ssf"]
# the modules that each mode adds; their parameters (and the heads') are the ones that train
ADDED = {"adaptformer": AdaptFormerBranch, "vpt_shallow": VisualPrompts, "vpt_deep": VisualPrompts, "ssf": ScaleShift}


def network(family: str, finetune: str, seed: int = 0, adapt: bool = True, **overrides):
    torch.manual_seed(seed)
    settings = {**FAMILIES[family], "projection_hidden": 16, "projection_dim": 8, **overrides}
    cfg = ModelConfig(**settings, finetune=finetune)
    net = build_network(cfg, num_classes=4)
    if adapt:
        apply_finetune(net, cfg)
    return net, cfg


def adapter_names(net: nn.Module, finetune: str) -> set[str]:
    kind = ADDED[finetune.partition(":")[0]]
    return {
        f"{module_name}.{name}"
        for module_name, module in net.named_modules()
        if isinstance(module, kind)
        for name, _ in module.named_parameters()
    }


def head_names(net: nn.Module) -> set[str]:
    return {n for n, _ in net.named_parameters() if n.startswith(("projection.", "classifier."))}


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def randomise_adapters(net: nn.Module, finetune: str) -> None:
    """Moves every adapter parameter away from its start, so that they all matter to the output."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name in adapter_names(net, finetune):
                param.add_(0.5 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("finetune", ["adaptformer", "adaptformer:5", "ssf"])
def test_adaptformer_and_ssf_start_as_exactly_the_backbone(family, finetune):
    net, cfg = network(family, finetune, adapt=False)
    net.eval()
    with torch.no_grad():
        base = net(images())
    apply_finetune(net, cfg)
    assert adapter_names(net, finetune)
    with torch.no_grad():
        adapted = net(images())
    for got, want in zip(adapted, base):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_ssf_site_acts_on_the_output(family):
    """A shift that reaches nothing (a hook on a module that is never called, such as nn.MultiheadAttention's
    out_proj) would leave the output as it is; six sites per block: two norms, q/k/v, attention output, fc1, fc2."""
    net, _ = network(family, "ssf")
    net.eval()
    sites = [(n, m) for n, m in net.named_modules() if isinstance(m, ScaleShift)]
    assert len(sites) == 6 * len(find_vit(net.backbone, "ssf").blocks)
    with torch.no_grad():
        base = net(images()).features
        for name, site in sites:
            site.shift.copy_(0.1 * torch.randn(site.shift.shape, generator=torch.Generator().manual_seed(0)))
            assert not torch.allclose(net(images()).features, base), name
            site.shift.zero_()


def _block_reference(family: str, block: nn.Module, x: torch.Tensor, branch: nn.Module) -> torch.Tensor:
    """A block's output with AdaptFormer, computed from the block's parts: the branch reads the stream x' that
    enters the MLP branch and is added beside the MLP."""
    if family == "timm":
        middle = x + block.ls1(block.attn(block.norm1(x)))
        return middle + block.ls2(block.mlp(block.norm2(middle))) + branch(middle)
    middle = x + block.ls_1(block.attention(q_x=block.ln_1(x)))
    return middle + block.ls_2(block.mlp(block.ln_2(middle))) + branch(middle)


@pytest.mark.parametrize("family", FAMILIES)
def test_adaptformer_branch_runs_beside_the_mlp_of_every_block(family):
    net, _ = network(family, "adaptformer:4")
    randomise_adapters(net, "adaptformer")
    net.eval()
    parts = find_vit(net.backbone, "adaptformer")
    branch = parts.blocks[0].adaptformer
    assert branch.down.weight.shape == (4, parts.width) and branch.up.weight.shape == (parts.width, 4)
    x = torch.randn(2, 5, parts.width)
    with torch.no_grad():
        expected = _block_reference(family, parts.blocks[0], x, branch)
        torch.testing.assert_close(parts.blocks[0](x), expected)
        # the branch's own formula: s * up(relu(down(LN(x))))
        y = torch.randn(3, parts.width)
        want = branch.scale * branch.up(F.relu(branch.down(F.layer_norm(y, (parts.width,), branch.norm.weight,
                                                                        branch.norm.bias))))  # fmt: skip
        torch.testing.assert_close(branch(y), want)
    assert not any("_adaptformer_input" in vars(m) for m in net.modules())  # no activation kept after a forward


def test_adaptformer_bottleneck_follows_lift():
    net, cfg = network("timm", "adaptformer", adapt=False)  # depth 2
    for classes, width in ((1, 1), (3, 1), (4, 1), (8, 2), (10, 2), (100, 16), (1000, 128)):
        assert lift_bottleneck(net.backbone, classes) == width, classes
    apply_finetune(net, cfg)  # 4 classes: 2 ** int(log2(4 / 4)) = 1
    assert net.backbone.blocks[0].adaptformer.down.out_features == 1
    net, cfg = network("timm", "adaptformer:6")
    assert net.backbone.blocks[1].adaptformer.down.out_features == 6


def _timm_vpt_reference(backbone: nn.Module, x: torch.Tensor, prompts: list[torch.Tensor]) -> torch.Tensor:
    """VPT spelled out with timm's pieces: prompts after the class token before block 0 (and replacing the
    previous ones before every later block that has its own), dropped before the final norm and pooling."""
    x = backbone.norm_pre(backbone.patch_drop(backbone._pos_embed(backbone.patch_embed(x))))
    count = len(prompts[0])
    for i, block in enumerate(backbone.blocks):
        if i < len(prompts):
            kept = x[:, 1:] if i == 0 else x[:, 1 + count :]
            x = torch.cat((x[:, :1], prompts[i].expand(len(x), -1, -1), kept), dim=1)
        x = block(x)
    x = torch.cat((x[:, :1], x[:, 1 + count :]), dim=1)
    return backbone.forward_head(backbone.norm(x))


def _clip_vpt_reference(visual: nn.Module, x: torch.Tensor, prompts: list[torch.Tensor]) -> torch.Tensor:
    x = visual._embeds(x)
    count = len(prompts[0])
    for i, block in enumerate(visual.transformer.resblocks):
        if i < len(prompts):
            kept = x[:, 1:] if i == 0 else x[:, 1 + count :]
            x = torch.cat((x[:, :1], prompts[i].expand(len(x), -1, -1), kept), dim=1)
        x = block(x)
    pooled, _ = visual._pool(torch.cat((x[:, :1], x[:, 1 + count :]), dim=1))
    return pooled @ visual.proj


@pytest.mark.parametrize("family,pool", [("timm", "token"), ("timm", "avg"), ("open_clip", "")])
@pytest.mark.parametrize("finetune", ["vpt_shallow:3", "vpt_deep:3"])
def test_vpt_puts_prompts_after_the_class_token_and_drops_them_before_pooling(family, pool, finetune):
    # timm: 3 blocks, pooled by the class token or by the mean of the patch tokens (prompts must not count)
    deeper = {"backbone_kwargs": {**TIMM["backbone_kwargs"], "depth": 3, "global_pool": pool}} if pool else {}
    net, _ = network(family, finetune, **deeper)
    plain, _ = network(family, finetune, adapt=False, **deeper)  # the same weights, without VPT's hooks
    net.eval()
    parts = find_vit(net.backbone, finetune)
    prompted = [b.vpt.tokens for b in parts.blocks if hasattr(b, "vpt")]
    assert len(prompted) == (len(parts.blocks) if "deep" in finetune else 1)
    assert all(p.shape == (3, parts.width) for p in prompted)
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach())) for b in parts.blocks]
    hooks += [parts.blocks[-1].register_forward_hook(lambda m, a, out: seen.append(out.detach()))]
    with torch.no_grad():
        features = net(images(2)).features
    for hook in hooks:
        hook.remove()
    patches = (32 // 8) ** 2
    # the hooks registered after VPT's see each block's input with the prompts in: P + N + patches tokens,
    # and the last block's output after VPT's hook has taken them out again
    assert [t.shape[1] for t in seen] == [1 + 3 + patches] * len(parts.blocks) + [1 + patches]
    for block_input, tokens in zip(seen, prompted):
        torch.testing.assert_close(block_input[:, 1:4], tokens.expand(2, -1, -1), rtol=0, atol=0)
    reference = _timm_vpt_reference if family == "timm" else _clip_vpt_reference
    with torch.no_grad():
        torch.testing.assert_close(features, reference(plain.backbone.eval(), images(2), prompted))


def test_vpt_prompts_start_uniform_in_the_vpt_range_and_default_to_ten():
    net, cfg = network("timm", "vpt_deep")  # patch 8x8, width 192
    tokens = net.backbone.blocks[1].vpt.tokens
    bound = (6 / (3 * 64 + 192)) ** 0.5
    assert tokens.shape == (10, 192) and tokens.abs().max() <= bound and tokens.abs().max() > 0.9 * bound
    assert abs(tokens.mean().item()) < 0.1 * bound


def test_vpt_handles_the_sequence_first_layout_as_the_batch_first_one():
    prompts = VisualPrompts(2, 6, (4, 4), prefix_tokens=1, token_dim=1, factory={})
    first = VisualPrompts(2, 6, (4, 4), prefix_tokens=1, token_dim=0, factory={})
    first.load_state_dict(prompts.state_dict())
    x = torch.randn(3, 5, 6)  # (B, L, D)
    for replace in (False, True):
        batch_first = prompts(x, replace)
        torch.testing.assert_close(first(x.transpose(0, 1), replace).transpose(0, 1), batch_first, rtol=0, atol=0)
    assert prompts(x, False).shape == (3, 7, 6) and prompts(x, True).shape == (3, 5, 6)
    torch.testing.assert_close(prompts(x, True)[:, [0, 3, 4]], x[:, [0, 3, 4]], rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("finetune", MODES)
def test_only_the_adapters_and_heads_train_and_move(family, finetune):
    net, cfg = network(family, finetune, adapt=False)
    counts = apply_finetune(net, cfg)
    expected = adapter_names(net, finetune) | head_names(net)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == expected
    assert counts.trainable == sum(p.numel() for n, p in net.named_parameters() if n in expected)
    assert counts.total == sum(p.numel() for p in net.parameters())
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    losses = sgd_steps(net)
    assert losses[-1] < losses[0]
    for name, param in net.named_parameters():
        if name in expected:  # a gradient at the last step (a move may round away: 1 + 1e-9 is 1 in float32)
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None and torch.equal(param, before[name]), name
    moved = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert moved & adapter_names(net, finetune) and moved <= expected


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("finetune", MODES)
def test_a_saved_state_loads_into_a_fresh_network_with_the_same_outputs(family, finetune):
    net, _ = network(family, finetune)
    randomise_adapters(net, finetune)
    state = copy.deepcopy(net.state_dict())
    fresh, _ = network(family, finetune, seed=5)  # other random weights everywhere until the state is loaded
    fresh.load_state_dict(state)  # strict: the same names, adapters included
    net.eval(), fresh.eval()
    with torch.no_grad():
        for got, want in zip(fresh(images()), net(images())):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("finetune", MODES)
def test_a_deep_copy_runs_its_own_adapters(family, finetune):
    """Momentum encoders are deep copies: their hooks must use the copy's adapters, not the original's."""
    net, _ = network(family, finetune)
    net.eval()
    twin = copy.deepcopy(net).eval()
    with torch.no_grad():
        before = net(images()).features
        randomise_adapters(twin, finetune)
        torch.testing.assert_close(net(images()).features, before, rtol=0, atol=0)
        assert not torch.allclose(twin(images()).features, before)


@pytest.mark.parametrize("finetune", ["adaptformer", "adaptformer:4", "vpt_shallow:2", "vpt_deep", "ssf"])
def test_an_adapter_on_a_conv_net_is_refused_in_one_sentence_and_changes_nothing(finetune):
    cfg = ModelConfig(backbone="resnet8", finetune=finetune, projection_dim=0)
    net = build_network(cfg, num_classes=3)
    names = [n for n, _ in net.named_parameters()]
    with pytest.raises(ValueError, match=r"pre-norm blocks of a vision transformer.*CifarResNet") as info:
        apply_finetune(net, cfg)
    assert len(str(info.value).splitlines()) == 1 and str(info.value).count(". ") == 0
    assert [n for n, _ in net.named_parameters()] == names and all(p.requires_grad for p in net.parameters())


def test_ssf_on_an_attention_without_biases_is_refused_before_anything_changes():
    net, cfg = network("open_clip", "ssf", adapt=False)
    net.backbone.transformer.resblocks[0].attn.out_proj.register_parameter("bias", None)
    with pytest.raises(ValueError, match="ssf folds.*no biases") as info:
        apply_finetune(net, cfg)
    assert len(str(info.value).splitlines()) == 1
    assert not any(isinstance(m, ScaleShift) for m in net.modules()) and all(p.requires_grad for p in net.parameters())


def test_adapting_twice_is_refused():
    net, cfg = network("timm", "ssf")
    with pytest.raises(ValueError, match="adapters already"):
        apply_finetune(net, dataclasses.replace(cfg, finetune="vpt_deep:2"))


def test_the_modes_parse_and_are_listed():
    modes = FINETUNE_MODES
    assert parse_finetune("adaptformer") == (modes.get("adaptformer"), 0)
    assert parse_finetune("adaptformer:8") == (modes.get("adaptformer"), 8)
    assert parse_finetune("vpt_deep:4") == (modes.get("vpt_deep"), 4) and parse_finetune("ssf") == (modes.get("ssf"), 0)
    for bad, message in (("adaptformer:0", "takes a bottleneck width R >= 1"), ("vpt_shallow:", "prompt count N"),
                         ("ssf:2", "takes no argument")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_finetune(bad)
    listed = {m["name"] for m in registered([])["finetune"]}
    assert {"adaptformer[:R]", "vpt_shallow[:N]", "vpt_deep[:N]", "ssf", "lora:R"} <= listed


@pytest.mark.parametrize("finetune", MODES)
def test_the_zero_shot_head_still_starts_from_the_class_names(finetune, no_network):
    names = ["cat", "dog", "fish", "bird"]
    torch.manual_seed(0)
    cfg = ModelConfig(**CLIP, classifier="cosine", zero_shot_head=True, finetune=finetune, projection_dim=0)
    net = build_network(cfg, num_classes=4, class_names=names)
    torch.manual_seed(0)  # the same random CLIP model, built by open_clip itself
    reference = open_clip.create_model("ViT-B-32", **TINY_CLIP_KWARGS).eval()
    tokens = open_clip.get_tokenizer("ViT-B-32")([f"a photo of a {n}." for n in names])
    with torch.no_grad():
        expected = F.normalize(reference.encode_text(tokens), dim=1)
    apply_finetune(net, cfg)
    torch.testing.assert_close(net.classifier.weight.detach(), expected)
    assert net.classifier.weight.requires_grad and adapter_names(net, finetune)


# --- through the command line: one short epoch in each mode, then resumed to a second ---

ONE_EPOCH = ["optim.epochs=1", "train.max_steps_per_epoch=2", "optim.warmup_epochs=0", "data.num_workers=0",
             "data.batch_size=32", "views.sizes=[32]", "train.progress=false", "data.eval_batch_size=250"]  # fmt: skip
TINY_VIT_SETS = ["model.backbone=timm/vit_tiny_patch16_224",
                 "model.backbone_kwargs={img_size: 32, patch_size: 8, depth: 2}"]  # fmt: skip


@pytest.mark.parametrize("finetune", ["adaptformer", "vpt_shallow:4", "vpt_deep:4", "ssf"])
def test_a_tiny_vit_trains_and_resumes_in_each_adapter_mode(tmp_path, finetune, monkeypatch, capsys):
    # ltcl's command line, in this process (the subprocess route is tested once, for the conv-net refusal below)
    from ltcl.cli import main
    from tests.engine.test_run_never_lies import DIGITS, sets
    from tests.engine.test_training import assert_reported, evaluated_again

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    overrides = sets(*ONE_EPOCH, *TINY_VIT_SETS, f"model.finetune={finetune}", f"train.output_dir={tmp_path}")
    assert main(["train", "-c", DIGITS, *overrides]) == 0
    stdout = capsys.readouterr().out
    run = tmp_path / "digits_lt"
    facts = yaml.safe_load((run / "config.yaml").read_text())["run"]["parameters"]
    assert f"{facts['trainable']:,} of {facts['total']:,} parameters train" in stdout
    # the header counts what trains: the adapters of this mode plus the heads, as apply_finetune gives them
    cfg = ModelConfig(**TIMM, finetune=finetune, projection_hidden=64, projection_dim=32)
    built = build_network(cfg, num_classes=10)
    counts = apply_finetune(built, cfg)
    assert (facts["trainable"], facts["total"]) == (counts.trainable, counts.total)
    assert 0 < facts["trainable"] < facts["total"] / 10

    assert main(["train", "--resume", str(run / "checkpoint_last.pt"), "--extend-epochs", "2"]) == 0
    assert "resumed from" in capsys.readouterr().out
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    assert state["epoch"] == 2
    # the resumed run's reported test accuracy is that of its saved model, adapters and all
    assert_reported(json.loads((run / "results.json").read_text())["test"], evaluated_again(run / "checkpoint_last.pt"))


def test_an_adapter_on_a_conv_net_stops_ltcl_train_with_one_sentence(tmp_path):
    from tests.engine.test_run_never_lies import DIGITS, ltcl, one_sentence, sets

    proc = ltcl("train", "-c", DIGITS, *sets(*ONE_EPOCH, "model.backbone=resnet8", "model.finetune=vpt_deep:4",
                                             f"train.output_dir={tmp_path}"))  # fmt: skip
    assert proc.returncode == 2 and "vpt_deep:4 adapts the pre-norm blocks of a vision transformer" in one_sentence(
        proc.stderr
    )
