"""The built-in backbone families, and building any registered backbone by name (``model.backbone``).

- ``cifar_resnet``: the CIFAR ResNets of :mod:`ltcl.models.resnet_cifar` (resnet8 ... resnet56).
- ``torchvision``: torchvision's ResNets and ResNeXts with their ``fc`` removed, and ResNeXt-101 32x4d built from
  the same class; weights only from a local file.
- ``timm``: ``timm/<name>``, any timm model (:mod:`ltcl.models.timm_backbone`).
- ``open_clip``: ``open_clip/<arch>``, an OpenCLIP image tower (:mod:`ltcl.models.clip_backbone`), which also gives
  the text embeddings of the class names for a zero-shot classifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from ltcl.config import ModelConfig
from ltcl.data.inputs import InputSpec
from ltcl.errors import UserError
from ltcl.models.clip_backbone import build_open_clip_backbone, open_clip_input_spec, open_clip_weights_origin
from ltcl.models.registry import (
    BACKBONES,
    BackboneRequest,
    BuiltBackbone,
    backbone_family,
    build_registered,
    register_backbone,
)
from ltcl.models.resnet_cifar import CIFAR_RESNETS
from ltcl.models.timm_backbone import build_timm_backbone, timm_input_spec, timm_weights_origin
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
    "resnext101_32x4d",  # not in torchvision: its ResNet class with the widths of Xie et al. 2017
)


def _no_pretrained(request: BackboneRequest) -> None:
    if request.pretrained:
        raise UserError(
            f"model.pretrained is for timm/ and open_clip/ backbones; {request.name} loads pretrained weights only "
            "from a local file (model.weights)."
        )


def _cifar_resnet(request: BackboneRequest) -> BuiltBackbone:
    _no_pretrained(request)
    if request.kwargs:
        raise UserError(f"model.backbone_kwargs must be empty for {request.name}, got {dict(request.kwargs)}.")
    backbone = CIFAR_RESNETS[request.name]()
    return BuiltBackbone(backbone, backbone.out_features)


def _torchvision(request: BackboneRequest) -> BuiltBackbone:
    _no_pretrained(request)
    name, kwargs = request.name, dict(request.kwargs)
    try:
        if name == "resnext101_32x4d":
            backbone = ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4, **kwargs)
        else:
            backbone = torchvision.models.get_model(name, weights=None, **kwargs)
    except TypeError as err:
        raise UserError(f"torchvision could not build {name} with model.backbone_kwargs {kwargs} ({err}).") from err
    feature_dim = backbone.fc.in_features
    backbone.fc = nn.Identity()
    return BuiltBackbone(backbone, feature_dim)


def _timm(request: BackboneRequest) -> BuiltBackbone:
    return BuiltBackbone(*build_timm_backbone(request.arch, request.pretrained, request.kwargs))


def _open_clip(request: BackboneRequest) -> BuiltBackbone:
    module, dim, text = build_open_clip_backbone(request.arch, request.pretrained, request.kwargs, request.class_names)
    return BuiltBackbone(module, dim, text)


register_backbone(
    "cifar_resnet", _cifar_resnet, names=tuple(CIFAR_RESNETS), paper="He et al., CVPR 2016 (CIFAR variant, option A)"
)
register_backbone(
    "torchvision", _torchvision, names=TORCHVISION_BACKBONES, paper="He et al., CVPR 2016; Xie et al., CVPR 2017"
)
register_backbone(
    "timm",
    _timm,
    prefix="timm/",
    input_spec=lambda r: timm_input_spec(r.arch, r.kwargs),
    paper="any timm model (pip install 'ltcl[timm]')",
    describe_pretrained=lambda r: timm_weights_origin(r.arch, r.kwargs),
)
register_backbone(
    "open_clip",
    _open_clip,
    prefix="open_clip/",
    input_spec=lambda r: open_clip_input_spec(r.arch, r.pretrained, r.kwargs),
    weights_prefix="visual.",
    paper="Radford et al., ICML 2021 (OpenCLIP image towers, pip install 'ltcl[clip]')",
    describe_pretrained=lambda r: open_clip_weights_origin(r.pretrained),
)
import ltcl.models.bbn  # noqa: E402, F401  (registers BBN's bilateral backbones, bbn_resnet32 ...)

KNOWN_BACKBONES = tuple(n for _, family in BACKBONES.items() for n in family.names)


def build_backbone(
    name: str,
    weights: str = "",
    *,
    pretrained: bool | str = False,
    kwargs: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
) -> BuiltBackbone:
    """Builds a registered backbone by name, optionally loading weights.

    Args:
        name: ``model.backbone``: a registered name ("resnet32", "resnet50", ...) or "timm/<name>",
            "open_clip/<arch>".
        weights: path of a local .pth/.safetensors file, loaded after any pretrained weights ("": none).
        pretrained: timm: True for timm's pretrained weights; open_clip: a pretrained tag or checkpoint path.
        kwargs: model.backbone_kwargs for the family's constructor.
        class_names: ask for the text embeddings of these class names (the zero-shot head); None: not needed.

    Returns:
        The module, mapping (B, 3, H, W) images to (B, feature_dim) features, its feature_dim, and the text
        weights (C, feature_dim) when asked for and the family provides them.
    """
    family = backbone_family(name)
    built = build_registered(family, family.request(name, pretrained, kwargs, class_names))
    if weights:
        load_backbone_weights(built.module, weights, select=family.weights_prefix)
    return built


def input_spec(model_cfg: ModelConfig) -> InputSpec | None:
    """The input size and normalisation the configured backbone was pretrained with, or None (it defines none).

    Read from the family's own description (timm's pretrained config, OpenCLIP's model and tag configs); nothing
    is downloaded and no weights are read. ``backbone_kwargs`` that change the resolution (timm ``img_size``,
    OpenCLIP ``force_image_size``) are taken into account.
    """
    family = backbone_family(model_cfg.backbone)
    if family.input_spec is None:
        return None
    return family.input_spec(family.request(model_cfg.backbone, model_cfg.pretrained, model_cfg.backbone_kwargs))


def weights_origin(model_cfg: ModelConfig) -> str:
    """Where the backbone's weights come from, for the run header.

    "timm pretrained <hub id> (hub cache)", "OpenCLIP pretrained <tag>", "local file PATH" (read after
    any pretrained weights: "..., then local file PATH"), or "random init". Nothing is read or downloaded.
    """
    parts = []
    if model_cfg.pretrained:
        family = backbone_family(model_cfg.backbone)
        request = family.request(model_cfg.backbone, model_cfg.pretrained, model_cfg.backbone_kwargs)
        describe = family.describe_pretrained
        parts.append(describe(request) if describe else f"{family.name} pretrained {model_cfg.pretrained}")
    if model_cfg.weights:
        parts.append(f"local file {model_cfg.weights}")
    return ", then ".join(parts) or "random init"
