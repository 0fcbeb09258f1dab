"""Backbone weights from local PyTorch files: nesting, key prefixes, checkpoints of our own network, errors."""

import pytest
import torch
import torchvision
from torch import nn

from ltcl.config import ModelConfig
from ltcl.models import build_backbone, build_network


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def test_weights_round_trip_with_module_prefix_and_nested_state_dict(tmp_path):
    source, _, _ = build_backbone("resnet8")
    source.train()(torch.randn(4, 3, 32, 32))  # non-trivial running stats
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.fc.weight"] = torch.randn(10, 64)  # a classifier from pretraining is ignored
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": state, "epoch": 7}, path)

    loaded, _, _ = build_backbone("resnet8", weights=str(path))
    fresh, _, _ = build_backbone("resnet8")
    assert not torch.equal(fresh.conv1.weight, source.conv1.weight)
    _assert_same_state(loaded, source)


def test_weights_from_torchvision_style_and_moco_style_files(tmp_path):
    source = torchvision.models.get_model("resnet18", weights=None)
    # torchvision's own files keep fc and (in older releases) lack BN num_batches_tracked
    plain = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(plain, tmp_path / "tv.pth")
    loaded, _, _ = build_backbone("resnet18", weights=str(tmp_path / "tv.pth"))
    for key, value in plain.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)

    other = torchvision.models.get_model("resnet18", weights=None)
    moco = {f"module.encoder_q.{k}": v for k, v in source.state_dict().items()}
    moco.update({f"module.encoder_k.{k}": v for k, v in other.state_dict().items()})
    torch.save({"model": moco}, tmp_path / "moco.pth")
    loaded, _, _ = build_backbone("resnet18", weights=str(tmp_path / "moco.pth"))
    torch.testing.assert_close(loaded.layer4[1].conv2.weight, source.layer4[1].conv2.weight, rtol=0, atol=0)


def test_network_checkpoint_feeds_a_new_network(tmp_path):
    cfg = ModelConfig(backbone="resnet8", projection_hidden=0, projection_dim=8)
    trained = build_network(cfg, num_classes=5)
    torch.save({"model": trained.state_dict(), "optimizer": {}}, tmp_path / "run.pt")
    cfg.weights = str(tmp_path / "run.pt")
    again = build_network(cfg, num_classes=7)  # a new head count: only the backbone is reused
    _assert_same_state(again.backbone, trained.backbone)


def test_weights_error_paths(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_backbone("resnet8", weights=str(missing))

    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.txt"):
        build_backbone("resnet8", weights=str(text))

    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt.*no state_dict"):
        build_backbone("resnet8", weights=str(tmp_path / "list.pt"))

    source, _, _ = build_backbone("resnet8")
    state = source.state_dict()
    del state["layer3.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"partial.pt.*layer3\.0\.conv1\.weight"):
        build_backbone("resnet8", weights=str(tmp_path / "partial.pt"))

    state = source.state_dict()
    state["conv1.weight"] = torch.zeros(16, 3, 5, 5)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"shape.pt.*conv1\.weight"):
        build_backbone("resnet8", weights=str(tmp_path / "shape.pt"))
