"""The network trained by every recipe: backbone -> features -> (classifier logits, normalised projections).

Backbones come by name: the CIFAR ResNets of :mod:`ltcl.models.resnet_cifar`, or torchvision ResNets and
ResNeXts with their ``fc`` removed. Weights only ever come from a local file; nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from ltcl.config import ModelConfig
from ltcl.models.resnet_cifar import CIFAR_RESNETS

TORCHVISION_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                         "resnext101_32x8d", "resnext101_64x4d")
# Not in torchvision; built from its ResNet class with the ResNeXt-101 32x4d widths (Xie et al. 2017).
EXTRA_BACKBONES = ("resnext101_32x4d",)
KNOWN_BACKBONES = tuple(CIFAR_RESNETS) + TORCHVISION_BACKBONES + EXTRA_BACKBONES

# Where checkpoints of other codebases keep the backbone: nested mappings, then key prefixes
# (DataParallel/DDP "module.", our own network's "backbone.", MoCo's "encoder_q.").
_NESTING_KEYS = ("state_dict", "model", "backbone")
_KEY_PREFIXES = ("module.", "backbone.", "encoder_q.")
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Loads a weights file and returns its backbone tensors under the backbone's own key names."""
    if not path.is_file():
        raise FileNotFoundError(f"Backbone weights file {path} (model.weights) does not exist or is not a "
                                "file.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable content is the same user mistake
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"Backbone weights file {path} could not be read as a PyTorch state_dict "
                         f"({reason}).") from err
    while isinstance(obj, Mapping):
        nested = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    items = obj.items() if isinstance(obj, Mapping) else ()
    tensors = {k: v for k, v in items if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"Backbone weights file {path} holds no state_dict (a mapping of names to tensors).")
    state = {}
    for key, value in tensors.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _KEY_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        state[key] = value
    return state


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Copies the weights of a local file into ``backbone``; every backbone tensor must be present.

    Keys the backbone does not have are ignored: the pretraining ``fc`` classifier (our backbones replace it
    by an identity), a projection head, MoCo's key encoder. BatchNorm ``num_batches_tracked`` counters may be
    absent (older torchvision files lack them).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a state_dict, lacks backbone keys, or holds tensors of the wrong shape.
    """
    path = Path(path)
    state = _read_state_dict(path)
    own = backbone.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"Backbone weights file {path} lacks {len(missing)} of the backbone's keys, first "
                         f"{missing[:5]} (the file has keys such as {list(state)[:5]}).")
    for key, value in own.items():
        if key in state and state[key].shape != value.shape:
            raise ValueError(f"Backbone weights file {path} holds '{key}' with shape "
                             f"{tuple(state[key].shape)}, expected {tuple(value.shape)}: it was trained for "
                             "another architecture.")
    backbone.load_state_dict({k: state[k] for k in own if k in state}, strict=False)


def build_backbone(name: str, weights: str = "") -> tuple[nn.Module, int]:
    """Builds a feature extractor by name, optionally loading local weights.

    Args:
        name: one of ``KNOWN_BACKBONES`` ("resnet32", "resnet50", "resnext50_32x4d", ...).
        weights: path of a local state_dict file ("" for random initialisation).

    Returns:
        (backbone, feature_dim): the module maps (B, 3, H, W) images to (B, feature_dim) features.
    """
    if name in CIFAR_RESNETS:
        backbone: nn.Module = CIFAR_RESNETS[name]()
        feature_dim = backbone.out_features
    elif name in TORCHVISION_BACKBONES or name in EXTRA_BACKBONES:
        if name == "resnext101_32x4d":
            backbone = ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4)
        else:
            backbone = torchvision.models.get_model(name, weights=None)
        feature_dim = backbone.fc.in_features
        backbone.fc = nn.Identity()
    else:
        raise ValueError(f"Unknown backbone '{name}' (model.backbone); expected one of "
                         f"{', '.join(KNOWN_BACKBONES)}.")
    if weights:
        load_backbone_weights(backbone, weights)
    return backbone, feature_dim


class ProjectionHead(nn.Sequential):
    """Linear-(BatchNorm)-ReLU-Linear MLP, or a single Linear when ``hidden_dim`` is 0.

    Maps (B, in_dim) features to (B, out_dim) projections, not normalised (the network normalises them).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = False) -> None:
        if in_dim <= 0 or out_dim <= 0 or hidden_dim < 0:
            raise ValueError(f"ProjectionHead needs positive in/out sizes and hidden size >= 0, got "
                             f"in_dim={in_dim}, hidden_dim={hidden_dim}, out_dim={out_dim}.")
        if hidden_dim == 0:
            layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        else:
            # The BatchNorm makes the first bias redundant.
            layers = [nn.Linear(in_dim, hidden_dim, bias=not batch_norm)]
            layers += [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
            layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
        super().__init__(*layers)


class LinearClassifier(nn.Linear):
    """Affine classifier: (B, in_dim) features -> (B, num_classes) logits ``f W^T + b``."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__(in_dim, num_classes)


class CosineClassifier(nn.Module):
    """Cosine classifier: ``logits = scale * normalize(f) @ normalize(W)^T``, no bias.

    Args:
        in_dim: feature size F.
        num_classes: C.
        scale: fixed logit scale (> 0); cosines lie in [-1, 1], so the scale sets how peaked softmax can be.

    Shapes: (B, F) features -> (B, C) logits; ``weight`` is (C, F).
    """

    def __init__(self, in_dim: int, num_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"CosineClassifier scale (model.cosine_scale) must be positive, got {scale}.")
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # the nn.Linear default; only directions matter

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).t()

    def extra_repr(self) -> str:
        return f"in_dim={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, scale={self.scale}"


class NetworkOutput(NamedTuple):
    """What :class:`LongTailNetwork` returns for a batch of B images.

    Attributes:
        logits: (B, C) classifier scores.
        features: (B, F) backbone features.
        projections: (B, D) L2-normalised projections, or None when the head was skipped or absent.
    """

    logits: torch.Tensor
    features: torch.Tensor
    projections: torch.Tensor | None


class LongTailNetwork(nn.Module):
    """Backbone shared by a classifier and an optional projection head.

    Args:
        backbone: maps (B, 3, H, W) images to (B, feature_dim) features.
        feature_dim: F.
        num_classes: C.
        projection: head for the contrastive loss, or None (plain classification objectives).
        classifier: maps (B, F) to (B, C) logits.

    ``train(True)`` keeps every BatchNorm layer whose parameters are all frozen in eval mode, so that its
    running statistics stay those of the pretrained weights (see :func:`apply_trainable`).
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int,
                 projection: ProjectionHead | None, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.projection = projection
        self.classifier = classifier

    def forward(self, x: torch.Tensor, with_projection: bool = True) -> NetworkOutput:
        """(B, 3, H, W) images -> logits (B, C), features (B, F), projections (B, D) unit-norm or None."""
        features = self.backbone(x)
        logits = self.classifier(features)
        projections = None
        if with_projection and self.projection is not None:
            projections = F.normalize(self.projection(features), dim=1)
        return NetworkOutput(logits, features, projections)

    def train(self, mode: bool = True) -> LongTailNetwork:
        super().train(mode)
        if mode:
            for module in self.modules():
                params = list(module.parameters(recurse=False)) if isinstance(module, _BATCH_NORMS) else []
                # A BatchNorm without affine parameters has nothing to freeze: it keeps training normally.
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self


def build_network(model_cfg: ModelConfig, num_classes: int) -> LongTailNetwork:
    """Builds backbone, projection head (none when ``projection_dim`` is 0) and classifier from the config."""
    if model_cfg.classifier not in ("linear", "cosine"):
        raise ValueError(f"model.classifier must be 'linear' or 'cosine', got '{model_cfg.classifier}'.")
    if num_classes < 1:
        raise ValueError(f"The network needs at least one class, got num_classes={num_classes}.")
    if model_cfg.projection_dim < 0 or model_cfg.projection_hidden < 0:
        raise ValueError(f"model.projection_dim and model.projection_hidden must be >= 0, got "
                         f"{model_cfg.projection_dim} and {model_cfg.projection_hidden}.")
    backbone, feature_dim = build_backbone(model_cfg.backbone, model_cfg.weights)
    projection = None
    if model_cfg.projection_dim > 0:
        projection = ProjectionHead(feature_dim, model_cfg.projection_hidden, model_cfg.projection_dim,
                                    model_cfg.projection_bn)
    if model_cfg.classifier == "linear":
        classifier: nn.Module = LinearClassifier(feature_dim, num_classes)
    else:
        classifier = CosineClassifier(feature_dim, num_classes, model_cfg.cosine_scale)
    return LongTailNetwork(backbone, feature_dim, num_classes, projection, classifier)


def _matches(name: str, prefix: str) -> bool:
    # Whole name components only: "backbone.layer3.3" must not also train "backbone.layer3.30" (ResNet-152).
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def apply_trainable(model: nn.Module, prefixes: Sequence[str]) -> int:
    """Freezes every parameter outside ``prefixes`` (model.trainable); an empty list leaves all as they are.

    A prefix matches whole dotted components of ``model.named_parameters()`` names ("backbone.layer4.2" trains
    "backbone.layer4.2.conv1.weight" but not "backbone.layer4.20..."). Call it before wrapping the model in
    DDP; the model's train/eval mode is re-applied so that frozen BatchNorm layers switch to eval at once.

    Returns:
        The number of trainable parameter elements.
    """
    named = list(model.named_parameters())
    if prefixes:
        for prefix in prefixes:
            if not any(_matches(name, prefix) for name, _ in named):
                roots = sorted({name.split(".")[0] for name, _ in named})
                raise ValueError(f"model.trainable prefix '{prefix}' matches no parameter (names start with "
                                 f"{', '.join(roots)}).")
        for name, param in named:
            param.requires_grad_(any(_matches(name, prefix) for prefix in prefixes))
        model.train(model.training)
    return sum(p.numel() for _, p in named if p.requires_grad)
