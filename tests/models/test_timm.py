"""timm backbones: names, pretrained weights offline, local weights files, input specs, the optional extra."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ltcl.config import ModelConfig
from ltcl.models import InputSpec, build_backbone, build_network, input_spec
from tests.models.tiny import TINY_VIT

timm = pytest.importorskip("timm")

OFFLINE_SCRIPT = """
import json, sys
from ltcl.config import ModelConfig
from ltcl.models import build_network
messages = {}
for key, cfg in [("timm", ModelConfig(backbone="timm/resnet18", pretrained=True)),
                 ("open_clip", ModelConfig(backbone="open_clip/ViT-B-32-quickgelu", pretrained="openai"))]:
    try:
        build_network(cfg, num_classes=3)
        messages[key] = None
    except ValueError as err:
        messages[key] = str(err)
# resnet10t's weights were put into the hub cache by the test: they load offline, with the hub's file names
import torch
from safetensors.torch import load_file
net = build_network(ModelConfig(backbone="timm/resnet10t", pretrained=True), num_classes=3)
cached = load_file(sys.argv[1])
messages["cached"] = all(torch.equal(v, cached[k]) for k, v in net.backbone.state_dict().items())
print(json.dumps(messages))
"""


def fill_hub_cache(hub: Path, repo: str, state: dict) -> str:
    """Writes ``state`` as the hub cache's ``model.safetensors`` of ``repo``, as a download would."""
    from safetensors.torch import save_file

    commit = "0" * 40
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / commit).mkdir(parents=True)
    path = root / "snapshots" / commit / "model.safetensors"
    save_file(state, str(path))
    return str(path)


def one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and ". " not in message.replace("e.g. ", "")


def test_pretrained_loads_from_the_hub_cache_offline_and_a_missing_copy_is_one_sentence(tmp_path):
    torch.manual_seed(5)
    cached = fill_hub_cache(
        tmp_path / "hf" / "hub", "timm/resnet10t.c3_in1k", timm.create_model("resnet10t").state_dict()
    )
    # The hub reads HF_HUB_OFFLINE and its cache paths at import, hence a fresh interpreter.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
               TORCH_HOME=str(tmp_path / "torch"), XDG_CACHE_HOME=str(tmp_path / "cache"))  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, cached], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    messages = json.loads(run.stdout.strip().splitlines()[-1])
    for key, name in (("timm", "'resnet18'"), ("open_clip", "open_clip/ViT-B-32-quickgelu")):
        message = messages[key]
        assert message is not None and name in message, message
        assert str(tmp_path / "hf" / "hub") in message and "HF_HUB_OFFLINE" in message, message
        assert one_sentence(message), message
    assert messages["cached"] is True
    assert len(list((tmp_path / "hf" / "hub").glob("models--*"))) == 1  # nothing was fetched


def _full_timm_state(name: str) -> dict[str, torch.Tensor]:
    """The state_dict of the whole timm model, classifier included, as hub files hold it."""
    torch.manual_seed(3)
    return timm.create_model(name, **TINY_VIT["backbone_kwargs"]).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_files_load_into_a_timm_backbone(tmp_path, suffix, no_network):
    state = _full_timm_state("vit_tiny_patch16_224")
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    cfg = ModelConfig(**TINY_VIT, weights=str(path))
    net = build_network(cfg, num_classes=3)
    own = net.backbone.state_dict()
    assert "head.weight" in state and "head.weight" not in own  # the hub classifier is ignored
    for key, value in own.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_unreadable_safetensors_file_is_a_one_sentence_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="broken.safetensors.*safetensors") as info:
        build_backbone("resnet8", weights=str(path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "backbone,kwargs,pretrained,match",
    [
        ("timm/convnext_tinyy", {}, False, "no model 'convnext_tinyy'.*close names: convnext_tiny"),
        ("timm/convnext_tiny.nope", {}, False, "no pretrained tag 'nope'.*fb_in1k"),
        ("timm/", {}, False, "needs a model name"),
        ("timm/resnet18", {"bogus": 1}, False, "backbone_kwargs.*bogus"),
        ("timm/resnet18", {"num_classes": 10}, False, "must not set num_classes"),
        ("timm/resnet18", {}, "in1k", "true or false"),
        ("resnet32", {}, True, "model.weights"),
        ("resnet32", {"depth": 20}, False, "backbone_kwargs must be empty"),
    ],
)
def test_bad_timm_values_are_one_sentence_errors(backbone, kwargs, pretrained, match, no_network):
    with pytest.raises(ValueError, match=match) as info:
        build_network(ModelConfig(backbone=backbone, backbone_kwargs=kwargs, pretrained=pretrained), num_classes=3)
    assert one_sentence(str(info.value)), str(info.value)


def test_input_spec_comes_from_the_pretrained_config_without_network(no_network):
    clip = input_spec(ModelConfig(backbone="timm/vit_base_patch16_clip_224.openai"))
    assert clip == InputSpec(
        224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), True, "img_size",
        "dynamic_img_size",
    )  # fmt: skip
    assert input_spec(ModelConfig(backbone="timm/convnext_tiny")) == InputSpec(
        224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )
    assert input_spec(ModelConfig(**TINY_VIT)).size == 32  # img_size overrides the pretrained resolution
    assert input_spec(ModelConfig(backbone="resnet32")) is None
    with pytest.raises(ValueError, match="model.backbone"):
        input_spec(ModelConfig(backbone="resnet33"))


def test_a_missing_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'ltcl\[timm\]'") as info:
        build_backbone("timm/resnet18")
    assert one_sentence(str(info.value))
