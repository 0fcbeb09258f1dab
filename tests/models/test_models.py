"""Models: CIFAR ResNets, torchvision backbones, heads, classifiers, partial freezing."""

import math

import pytest
import torch
import torchvision
from torch import nn

from ltcl.config import ModelConfig
from ltcl.models import (
    CifarResNet,
    CosineClassifier,
    LinearClassifier,
    LongTailNetwork,
    ProjectionHead,
    apply_finetune,
    build_backbone,
    build_network,
    resnet32,
)
from ltcl.models.resnet_cifar import BasicBlock, ShortcutA


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cifar_resnet_param_count(depth: int, num_classes: int = 0) -> int:
    """Counted from the architecture: 3x3 convs without bias, BN (weight + bias), a fc with bias."""
    blocks = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16
    c_in = 16
    for c_out in (16, 32, 64):
        for _ in range(blocks):
            total += c_in * c_out * 9 + 2 * c_out + c_out * c_out * 9 + 2 * c_out
            c_in = c_out
    return total + (64 * num_classes + num_classes if num_classes else 0)


def bottleneck_backbone_param_count(layers, groups, width_per_group) -> int:
    """Parameters of a torchvision Bottleneck ResNet(X) without its fc, counted from the architecture."""
    total = 3 * 64 * 7 * 7 + 2 * 64
    c_in = 64
    for stage, n_blocks in enumerate(layers):
        planes = 64 * 2**stage
        width = int(planes * width_per_group / 64) * groups
        c_out = planes * 4
        for block in range(n_blocks):
            total += c_in * width + 2 * width  # 1x1 reduce + BN
            total += (width // groups) * width * 9 + 2 * width  # grouped 3x3 + BN
            total += width * c_out + 2 * c_out  # 1x1 expand + BN
            if block == 0:
                total += c_in * c_out + 2 * c_out  # projection shortcut + BN
            c_in = c_out
    return total


# ---------------------------------------------------------------------------------------------------------
# CIFAR ResNets


def test_resnet32_with_linear_classifier_has_the_paper_parameter_count():
    cfg = ModelConfig(backbone="resnet32", projection_dim=0, classifier="linear")
    net = build_network(cfg, num_classes=10)
    expected = cifar_resnet_param_count(32, num_classes=10)
    assert n_params(net) == expected
    assert round(expected / 1e6, 2) == 0.46
    # depth counts the weighted layers: depth - 1 convolutions plus the classifier
    assert sum(isinstance(m, nn.Conv2d) for m in net.backbone.modules()) == 31


@pytest.mark.parametrize("name,depth", [("resnet8", 8), ("resnet20", 20), ("resnet44", 44), ("resnet56", 56)])
def test_cifar_family_parameter_counts(name, depth):
    backbone, dim, _ = build_backbone(name)
    assert dim == 64 and backbone.out_features == 64
    assert n_params(backbone) == cifar_resnet_param_count(depth)


@pytest.mark.parametrize("size", [32, 24, 16])
def test_resnet32_returns_pooled_64d_features_at_any_size(size):
    model = resnet32().eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        out = model(x)
        trunk = model.layer3(model.layer2(model.layer1(torch.relu(model.bn1(model.conv1(x))))))
    assert out.shape == (3, 64)
    assert trunk.shape[-1] == math.ceil(size / 4)
    torch.testing.assert_close(out, trunk.mean(dim=(2, 3)))


def test_cifar_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n"):
        CifarResNet(30)


def test_convolutions_use_kaiming_normal_init():
    model = resnet32()
    weights = torch.cat(
        [m.weight.flatten() for m in model.layer3.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 64]
    )
    # kaiming_normal_ (fan_in, ReLU gain): std = sqrt(2 / (64 * 9)); the torch default is about 2.4x smaller
    assert weights.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert abs(weights.mean().item()) < 0.002


def _slow_option_a(x: torch.Tensor, c_out: int) -> torch.Tensor:
    b, c_in, h, w = x.shape
    out = torch.zeros(b, c_out, (h + 1) // 2, (w + 1) // 2, dtype=x.dtype)
    front = (c_out - c_in) // 2
    for c in range(c_in):
        for i in range(0, h, 2):
            for j in range(0, w, 2):
                out[:, front + c, i // 2, j // 2] = x[:, c, i, j]
    return out


@pytest.mark.parametrize("size", [8, 7])
def test_option_a_shortcut_is_parameter_free_subsample_and_zero_pad(size):
    shortcut = ShortcutA(16, 32, stride=2)
    assert n_params(shortcut) == 0 and len(list(shortcut.buffers())) == 0
    x = torch.randn(2, 16, size, size)
    torch.testing.assert_close(shortcut(x), _slow_option_a(x, 32), rtol=0, atol=0)

    block = BasicBlock(16, 32, stride=2).eval()
    expected_params = 16 * 32 * 9 + 32 * 32 * 9 + 4 * 32  # two convs and two BNs, nothing else
    assert n_params(block) == expected_params
    with torch.no_grad():
        residual = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        torch.testing.assert_close(block(x), torch.relu(residual + _slow_option_a(x, 32)))


# ---------------------------------------------------------------------------------------------------------
# torchvision backbones


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet50", 2048), ("resnext50_32x4d", 2048)])
def test_torchvision_backbone_builds_and_returns_features(name, dim):
    backbone, feature_dim, _ = build_backbone(name)
    assert feature_dim == dim and isinstance(backbone.fc, nn.Identity)
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, dim)


@pytest.mark.parametrize(
    "name", ["resnet50", "resnext50_32x4d", "resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d"]
)
def test_torchvision_backbone_matches_torchvision_without_fc(name):
    backbone, feature_dim, _ = build_backbone(name)
    with torch.device("meta"):  # the reference costs no memory or init time
        reference = torchvision.models.get_model(name, weights=None)
    assert feature_dim == reference.fc.in_features == 2048
    assert n_params(backbone) == n_params(reference) - n_params(reference.fc)


def test_resnext101_32x4d_has_the_resnext_architecture():
    backbone, feature_dim, _ = build_backbone("resnext101_32x4d")
    assert feature_dim == 2048
    # the counting formula is first checked against torchvision's ResNeXt-50 32x4d, then applied to 101 layers
    with torch.device("meta"):
        x50 = torchvision.models.get_model("resnext50_32x4d", weights=None)
    assert n_params(x50) - n_params(x50.fc) == bottleneck_backbone_param_count([3, 4, 6, 3], 32, 4)
    assert n_params(backbone) == bottleneck_backbone_param_count([3, 4, 23, 3], 32, 4)
    assert backbone.layer3[22].conv2.groups == 32 and backbone.layer1[0].conv2.out_channels == 128


def test_unknown_backbone_lists_known_names():
    with pytest.raises(ValueError, match="resnet33") as info:
        build_backbone("resnet33")
    assert "resnet32" in str(info.value) and "resnext101_32x4d" in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# Heads and the network


def test_cosine_classifier_matches_float64_reference():
    clf = CosineClassifier(6, 4, scale=16.0)
    features = torch.randn(5, 6) * 3
    logits = clf(features)
    w = clf.weight.detach().double().tolist()
    f = features.double().tolist()
    for b in range(5):
        for c in range(4):
            dot = sum(x * y for x, y in zip(f[b], w[c]))
            cos = dot / (math.sqrt(sum(x * x for x in f[b])) * math.sqrt(sum(y * y for y in w[c])))
            assert logits[b, c].item() == pytest.approx(16.0 * cos, abs=1e-4)
    assert n_params(clf) == 24  # no bias
    with pytest.raises(ValueError, match="cosine_scale"):
        CosineClassifier(6, 4, scale=0.0)


def test_projection_head_shapes_and_layers():
    head = ProjectionHead(64, 32, 8, batch_norm=False).eval()
    x = torch.randn(5, 64)
    first, last = head[0], head[-1]
    expected = torch.relu(x @ first.weight.T + first.bias) @ last.weight.T + last.bias
    torch.testing.assert_close(head(x), expected)
    assert n_params(head) == 64 * 32 + 32 + 32 * 8 + 8

    with_bn = ProjectionHead(64, 32, 8, batch_norm=True)
    assert [type(m) for m in with_bn] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    single = ProjectionHead(64, 0, 8)
    assert len(single) == 1 and single(x).shape == (5, 8)


@pytest.mark.parametrize("classifier", ["linear", "cosine"])
def test_network_outputs(classifier):
    cfg = ModelConfig(
        backbone="resnet8", projection_hidden=16, projection_dim=8, classifier=classifier, cosine_scale=10.0
    )
    net = build_network(cfg, num_classes=7).eval()
    expected_type = LinearClassifier if classifier == "linear" else CosineClassifier
    assert isinstance(net.classifier, expected_type)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        features = net.backbone(x)
        raw = net.projection(features)
    assert out.logits.shape == (3, 7) and out.features.shape == (3, 64) and out.projections.shape == (3, 8)
    torch.testing.assert_close(out.features, features)
    torch.testing.assert_close(out.projections.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(out.projections, raw / raw.norm(dim=1, keepdim=True))
    if classifier == "cosine":
        assert out.logits.abs().max() <= 10.0 + 1e-4
    assert net(x, with_projection=False).projections is None


def test_network_without_projection_head_and_bad_config():
    net = build_network(ModelConfig(backbone="resnet8", projection_dim=0), num_classes=3)
    assert net.projection is None and net(torch.randn(2, 3, 16, 16)).projections is None
    with pytest.raises(ValueError, match="model.classifier"):
        build_network(ModelConfig(backbone="resnet8", classifier="arcface"), num_classes=3)
    with pytest.raises(ValueError, match="model.backbone"):
        build_network(ModelConfig(backbone="vit_b_16"), num_classes=3)


# ---------------------------------------------------------------------------------------------------------
# Partial freezing (Places-LT trains only the last block, the head and the classifier)


def _bn_named(net: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {n: m for n, m in net.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))}


def test_trainable_prefixes_freeze_the_rest_of_the_backbone_and_keep_frozen_bn_in_eval():
    cfg = ModelConfig(backbone="resnet20", projection_hidden=16, projection_dim=8, projection_bn=True,
                      trainable=["backbone.layer3.2"])  # fmt: skip
    net = build_network(cfg, num_classes=5)
    count = apply_finetune(net, cfg).trainable

    for name, param in net.named_parameters():
        expected = name.startswith(("backbone.layer3.2.", "classifier.", "projection."))  # heads always train
        assert param.requires_grad == expected, name
    assert count == n_params(net.backbone.layer3[2]) + n_params(net.classifier) + n_params(net.projection)

    net.train()
    for name, bn in _bn_named(net).items():
        assert bn.training == name.startswith(("backbone.layer3.2.", "projection.")), name
    frozen, trained = net.backbone.layer1[0].bn1, net.backbone.layer3[2].bn2
    frozen_before, trained_before = frozen.running_mean.clone(), trained.running_mean.clone()
    out = net(torch.randn(4, 3, 32, 32) * 2 + 1)
    torch.testing.assert_close(frozen.running_mean, frozen_before, rtol=0, atol=0)
    assert not torch.equal(trained.running_mean, trained_before)

    (out.logits.sum() + out.projections.sum()).backward()
    assert net.backbone.layer3[2].conv1.weight.grad is not None
    assert net.backbone.layer3[1].conv1.weight.grad is None and net.projection[0].weight.grad is not None

    net.eval()
    assert not any(bn.training for bn in _bn_named(net).values())


def test_trainable_prefixes_match_whole_name_components():
    net = LongTailNetwork(CifarResNet(68), 64, 4, None, LinearClassifier(64, 4))  # 11 blocks: layer3.1 vs .10
    apply_finetune(net, ModelConfig(trainable=["backbone.layer3.1", "classifier."]))
    assert net.backbone.layer3[1].conv1.weight.requires_grad
    assert not net.backbone.layer3[10].conv1.weight.requires_grad
    assert net.classifier.bias.requires_grad


def test_trainable_prefixes_empty_and_unknown_prefix():
    net = build_network(ModelConfig(backbone="resnet8"), num_classes=4)
    assert apply_finetune(net, ModelConfig(backbone="resnet8")).trainable == n_params(net)
    assert all(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="backbone.layer9"):
        apply_finetune(net, ModelConfig(backbone="resnet8", trainable=["classifier", "backbone.layer9"]))
    assert all(p.requires_grad for p in net.parameters())  # nothing frozen by a failed call
