"""What a new user still trips on: a garbage weights file, view sizes a fixed-size model cannot take, a header that
hides the fine-tuning mode and the weights' origin, BitFit or LoRA on a random backbone, pretrained weights offline.

Everything runs in-process on tiny models; the network is simulated as down (nothing is downloaded or waited for).
"""

import argparse
import errno
import pickle
import re
import socket
import time

import pytest
import torch

from ltcl.config import Config, ModelConfig, ViewsConfig
from ltcl.data.build import DataBundle
from ltcl.engine.console import header
from ltcl.engine.recipe import model_views
from ltcl.errors import UserError
from ltcl.methods import build_objective
from ltcl.models import ParameterCounts, build_backbone, build_network
from tests.models.tiny import TINY_CLIP_KWARGS, TINY_VIT

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")


def one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and ". " not in message.replace("e.g. ", "")


# --- item 3: a garbage model.weights file ---------------------------------------------------------------------


def _write_garbage(path, kind: str) -> None:
    if kind == "random bytes":
        path.write_bytes(bytes(range(256)) * 3)
    elif kind == "text":
        path.write_text("These are the release notes, not a checkpoint.\n")
    elif kind == "plain pickle":
        with open(path, "wb") as f:
            pickle.dump(argparse.Namespace(lr=0.1), f)
    elif kind == "torch.save of an object":
        torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": {"w": torch.zeros(2)}}, path)
    elif kind == "truncated torch.save":
        torch.save({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:1500])
    elif kind == "git lfs pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1234\n")


@pytest.mark.parametrize(
    "kind,what",
    [
        ("random bytes", r"is not a PyTorch \(torch.save\) or safetensors weights file"),
        ("text", r"is a text file, not a PyTorch \(torch.save\) or safetensors weights file"),
        ("plain pickle", "is a plain Python pickle, not a PyTorch"),
        ("torch.save of an object", r"holds pickled Python objects besides tensors \(argparse\.Namespace\)"),
        ("truncated torch.save", "is a damaged or truncated PyTorch file"),
        ("git lfs pointer", "is a Git LFS pointer"),
    ],
)
@pytest.mark.filterwarnings("error::UserWarning")  # torch's own warnings would repeat its weights_only advice
def test_a_garbage_weights_file_is_one_sentence_that_never_repeats_torchs_advice(tmp_path, kind, what):
    path = tmp_path / "backbone.pth"
    _write_garbage(path, kind)
    with pytest.raises(UserError) as info:
        build_backbone("resnet8", weights=str(path))
    message = str(info.value)
    for advice in ("weights_only", "allow_pickle", "\x1b", "trust"):
        assert advice not in message, message
    assert message.startswith(f"Backbone weights file {path} (model.weights) "), message
    assert re.search(what, message), message
    assert one_sentence(message), message


def test_a_safetensors_file_named_pth_and_a_torch_file_named_safetensors_both_load(tmp_path):
    from safetensors.torch import save_file

    source, _, _ = build_backbone("resnet8")
    save_file(source.state_dict(), str(tmp_path / "weights.pth"))
    torch.save(source.state_dict(), tmp_path / "weights.safetensors")
    for name in ("weights.pth", "weights.safetensors"):
        loaded, _, _ = build_backbone("resnet8", weights=str(tmp_path / name))
        torch.testing.assert_close(loaded.conv1.weight, source.conv1.weight, rtol=0, atol=0)


# --- item 5: views.sizes that a fixed-size model cannot take ------------------------------------------------------


def _views(sizes, test_size=0) -> ViewsConfig:
    return ViewsConfig(num_views=len(sizes), sizes=list(sizes), test_size=test_size, normalization="model")


def test_a_fixed_size_vit_and_other_view_sizes_say_which_setting_to_change():
    cfg = Config(model=ModelConfig(**TINY_VIT), views=_views([48]))
    with pytest.raises(UserError) as info:
        model_views(cfg)  # before any data is read
    message = str(info.value)
    assert message == (
        "model.backbone timm/vit_tiny_patch16_224 takes 32-px inputs only, but views.sizes [48] differ: set them "
        "to 0 (the model's size), or model.backbone_kwargs {img_size: 48} or {dynamic_img_size: true}."
    ), message
    assert one_sentence(message)
    # the network would indeed fail deep inside timm
    net = build_network(cfg.model, num_classes=3)
    with pytest.raises(AssertionError, match="doesn't match model"):
        net(torch.randn(1, 3, 48, 48))


def test_the_evaluation_size_and_mixed_view_sizes_are_checked_too():
    cfg = Config(model=ModelConfig(**TINY_VIT), views=_views([0, 0], test_size=64))
    with pytest.raises(UserError, match=r"views\.test_size 64 differs.*img_size: 64") as info:
        model_views(cfg)
    assert one_sentence(str(info.value))
    cfg = Config(model=ModelConfig(**TINY_VIT), views=_views([32, 48], test_size=64))
    with pytest.raises(UserError, match=r"views\.sizes \[32, 48\] and views\.test_size 64 differ") as info:
        model_views(cfg)
    assert "{img_size" not in str(info.value) and "{dynamic_img_size: true}" in str(info.value)  # no one size fits


def test_a_model_that_takes_any_size_or_was_asked_to_passes_the_check():
    dynamic = {**TINY_VIT, "backbone_kwargs": {**TINY_VIT["backbone_kwargs"], "dynamic_img_size": True}}
    cfg = Config(model=ModelConfig(**dynamic), views=_views([48, 32], test_size=64))
    views = model_views(cfg)
    assert list(views.sizes) == [48, 32] and views.test_size == 64
    net = build_network(cfg.model, num_classes=3).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 48, 48)).logits.shape == (1, 3)
    resized = {**TINY_VIT, "backbone_kwargs": {**TINY_VIT["backbone_kwargs"], "img_size": 48}}
    assert model_views(Config(model=ModelConfig(**resized), views=_views([48, 0]))).sizes == [48, 48]
    # a convolutional timm model takes any size; a CIFAR ResNet defines none
    assert model_views(Config(model=ModelConfig(backbone="timm/resnet18"), views=_views([40], 56))).test_size == 56
    assert model_views(Config(model=ModelConfig(backbone="resnet32"), views=ViewsConfig(sizes=[40]))).sizes == [40]


def test_an_open_clip_tower_is_fixed_size_and_names_its_own_setting():
    model = ModelConfig(backbone="open_clip/ViT-B-32", backbone_kwargs=TINY_CLIP_KWARGS)
    with pytest.raises(UserError) as info:
        model_views(Config(model=model, views=_views([48])))
    message = str(info.value)
    assert "open_clip/ViT-B-32 takes 32-px inputs only" in message and "{force_image_size: 48}" in message, message
    assert "dynamic_img_size" not in message and one_sentence(message)


# --- items 13 and 14: the run header ------------------------------------------------------------------------------


def _header(**model) -> str:
    cfg = Config(model=ModelConfig(**model))
    counts = [20, 8, 2]
    data = DataBundle(
        train=[None] * sum(counts), val=None, test=[None] * 6, train_counts=counts, class_names=["a", "b", "c"],
        view_counts=torch.tensor([2, 3, 4]),
    )  # fmt: skip
    objective = build_objective(cfg, counts, feature_dim=8)
    return header(cfg, data, ParameterCounts(10, 100), objective, run_dir="runs/x", processes="1 process(es) on cpu",
                  amp=("none", "cpu"), steps_per_epoch=3)  # fmt: skip


def _model_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("  model  "))


def test_the_header_names_the_fine_tuning_mode_and_where_the_weights_came_from(tmp_path):
    line = _model_line(_header(backbone="timm/vit_tiny_patch16_224", pretrained=True, finetune="lora:8"))
    assert line.startswith("  model  timm/vit_tiny_patch16_224, finetune lora:8, weights: timm pretrained"), line
    assert "timm pretrained timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k (hub cache);" in line, line
    assert line.endswith("10 of 100 parameters train"), line
    weights = tmp_path / "moco.pth"
    line = _model_line(_header(backbone="resnet50", weights=str(weights), finetune="bitfit"))
    assert f"finetune bitfit, weights: local file {weights}" in line, line
    line = _model_line(_header(backbone="open_clip/ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert "finetune full, weights: OpenCLIP pretrained laion2b_s34b_b79k" in line, line
    assert "finetune full, weights: random init" in _model_line(_header(backbone="resnet32"))


@pytest.mark.parametrize("finetune", ["bitfit", "lora:4"])
def test_bitfit_or_lora_on_a_random_backbone_gets_a_one_line_note(finetune):
    text = _header(backbone="resnet32", finetune=finetune)
    notes = [line for line in text.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and f"model.finetune {finetune}" in notes[0], text
    assert "randomly initialised" in notes[0] and "model.pretrained" in notes[0] and "model.weights" in notes[0]
    for quiet in ({"finetune": "full"}, {"finetune": finetune, "weights": "w.pth"}):
        assert "note:" not in _header(backbone="resnet32", **quiet)
    assert "note:" not in _header(backbone="timm/resnet18", pretrained=True, finetune=finetune)


# --- item 15: pretrained weights offline --------------------------------------------------------------------------


@pytest.fixture
def network_down(monkeypatch, tmp_path):
    """No network (every connection fails at once), empty caches under tmp_path, and waits recorded, not slept."""
    from huggingface_hub import constants

    attempts, waits = [], []

    def unreachable(*args, **kwargs):
        attempts.append(args)
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(socket.socket, "connect", unreachable)
    monkeypatch.setattr(time, "sleep", waits.append)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return attempts, waits


def _fill_hub_cache(hub, repo: str, filename: str, state: dict) -> None:
    from safetensors.torch import save_file

    commit = "0" * 40
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(root / "snapshots" / commit / filename))


@pytest.mark.parametrize(
    "model,names",
    [
        ({"backbone": "timm/resnet10t", "pretrained": True}, "timm model 'resnet10t'"),
        (
            {"backbone": "open_clip/ViT-B-32", "pretrained": "laion2b_s34b_b79k", "backbone_kwargs": TINY_CLIP_KWARGS},
            "'laion2b_s34b_b79k' of open_clip/ViT-B-32",
        ),
    ],
)
def test_pretrained_weights_offline_fail_at_once_in_one_sentence(network_down, tmp_path, model, names):
    attempts, waits = network_down
    started = time.perf_counter()
    with pytest.raises(UserError) as info:
        build_network(ModelConfig(**model), num_classes=3)
    assert waits == [] and len(attempts) <= 1, (waits, attempts)  # one probe, no hub retries
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert names in message and str(tmp_path / "hf" / "hub") in message and "no connection to" in message, message
    assert one_sentence(message), message
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE is False  # the hub's own mode is left as it was


def test_cached_pretrained_weights_still_load_offline_without_retries(network_down, tmp_path):
    attempts, waits = network_down
    torch.manual_seed(5)
    timm_state = timm.create_model("resnet10t").state_dict()
    _fill_hub_cache(tmp_path / "hf" / "hub", "timm/resnet10t.c3_in1k", "model.safetensors", timm_state)
    net = build_network(ModelConfig(backbone="timm/resnet10t", pretrained=True), num_classes=3)
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, timm_state[key]), key

    clip_state = open_clip.create_model("ViT-B-32", **TINY_CLIP_KWARGS).state_dict()
    repo = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    _fill_hub_cache(tmp_path / "hf" / "hub", repo, "open_clip_model.safetensors", clip_state)
    clip = ModelConfig(backbone="open_clip/ViT-B-32", pretrained="laion2b_s34b_b79k", backbone_kwargs=TINY_CLIP_KWARGS)
    net = build_network(clip, num_classes=3)
    torch.testing.assert_close(net.backbone.conv1.weight, clip_state["visual.conv1.weight"], rtol=0, atol=0)
    assert waits == [] and len(attempts) <= 2, (waits, attempts)  # one probe per model, no hub retries
