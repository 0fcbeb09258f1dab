"""Backbones by name (``model.backbone``) and the input each pretrained one expects.

- Built in: the CIFAR ResNets of :mod:`ltcl.models.resnet_cifar`, torchvision ResNets and ResNeXts with
  their ``fc`` removed; weights only from a local file.
- ``timm/<name>``: any timm model (:mod:`ltcl.models.timm_backbone`).
- ``open_clip/<arch>``: an OpenCLIP image tower (:mod:`ltcl.models.clip_backbone`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from ltcl.config import ModelConfig
from ltcl.models.clip_backbone import build_open_clip_backbone, open_clip_input_spec
from ltcl.models.inputs import InputSpec
from ltcl.models.resnet_cifar import CIFAR_RESNETS
from ltcl.models.timm_backbone import build_timm_backbone, timm_input_spec
from ltcl.models.weights import load_backbone_weights

TORCHVISION_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
)
# Not in torchvision; built from its ResNet class with the ResNeXt-101 32x4d widths (Xie et al. 2017).
EXTRA_BACKBONES = ("resnext101_32x4d",)
KNOWN_BACKBONES = tuple(CIFAR_RESNETS) + TORCHVISION_BACKBONES + EXTRA_BACKBONES
TIMM_PREFIX = "timm/"
OPEN_CLIP_PREFIX = "open_clip/"


def _build_builtin(name: str, pretrained: bool | str, kwargs: Mapping[str, Any]) -> tuple[nn.Module, int]:
    if pretrained:
        raise ValueError(
            f"model.pretrained is for timm/ and open_clip/ backbones; {name} loads pretrained weights only from "
            "a local file (model.weights)."
        )
    if name in CIFAR_RESNETS:
        if kwargs:
            raise ValueError(f"model.backbone_kwargs must be empty for {name}, got {dict(kwargs)}.")
        backbone: nn.Module = CIFAR_RESNETS[name]()
        return backbone, backbone.out_features
    try:
        if name == "resnext101_32x4d":
            backbone = ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4, **kwargs)
        else:
            backbone = torchvision.models.get_model(name, weights=None, **kwargs)
    except TypeError as err:
        raise ValueError(
            f"torchvision could not build {name} with model.backbone_kwargs {dict(kwargs)} ({err})."
        ) from err
    feature_dim = backbone.fc.in_features
    backbone.fc = nn.Identity()
    return backbone, feature_dim


def build_backbone(
    name: str, weights: str = "", *, pretrained: bool | str = False, kwargs: Mapping[str, Any] | None = None
) -> tuple[nn.Module, int]:
    """Builds a feature extractor by name, optionally loading weights.

    Args:
        name: one of ``KNOWN_BACKBONES`` ("resnet32", "resnet50", ...), "timm/<name>" or "open_clip/<arch>".
        weights: path of a local .pth/.safetensors file, loaded after any pretrained weights ("": none).
        pretrained: timm: True for timm's pretrained weights; open_clip: a pretrained tag or checkpoint path.
        kwargs: model.backbone_kwargs for the timm / open_clip / torchvision constructor.

    Returns:
        (backbone, feature_dim): the module maps (B, 3, H, W) images to (B, feature_dim) features.
    """
    kwargs = dict(kwargs or {})
    if name.startswith(TIMM_PREFIX):
        backbone, feature_dim = build_timm_backbone(name[len(TIMM_PREFIX) :], pretrained, kwargs)
    elif name.startswith(OPEN_CLIP_PREFIX):
        backbone, feature_dim, _ = build_open_clip_backbone(name[len(OPEN_CLIP_PREFIX) :], pretrained, kwargs)
    elif name in KNOWN_BACKBONES:
        backbone, feature_dim = _build_builtin(name, pretrained, kwargs)
    else:
        raise ValueError(
            f"Unknown backbone '{name}' (model.backbone); expected one of {', '.join(KNOWN_BACKBONES)}, "
            "timm/<name> or open_clip/<arch>."
        )
    if weights:
        load_backbone_weights(backbone, weights, select="visual." if name.startswith(OPEN_CLIP_PREFIX) else "")
    return backbone, feature_dim


def input_spec(model_cfg: ModelConfig) -> InputSpec | None:
    """The input size and normalisation the configured backbone was pretrained with, or None (built-ins).

    Read from timm's pretrained config or OpenCLIP's model and tag configs; nothing is downloaded and no
    weights are read. ``backbone_kwargs`` that change the resolution (timm ``img_size``, OpenCLIP
    ``force_image_size``) are taken into account.
    """
    name, kwargs = model_cfg.backbone, dict(model_cfg.backbone_kwargs or {})
    if name.startswith(TIMM_PREFIX):
        return timm_input_spec(name[len(TIMM_PREFIX) :], kwargs)
    if name.startswith(OPEN_CLIP_PREFIX):
        return open_clip_input_spec(name[len(OPEN_CLIP_PREFIX) :], model_cfg.pretrained, kwargs)
    if name not in KNOWN_BACKBONES:
        raise ValueError(
            f"Unknown backbone '{name}' (model.backbone); expected one of {', '.join(KNOWN_BACKBONES)}, "
            "timm/<name> or open_clip/<arch>."
        )
    return None
