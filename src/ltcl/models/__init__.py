"""Backbones, projection head, classifiers and the network that combines them."""

from ltcl.models.network import (
    KNOWN_BACKBONES,
    CosineClassifier,
    LinearClassifier,
    LongTailNetwork,
    NetworkOutput,
    ProjectionHead,
    apply_trainable,
    build_backbone,
    build_network,
    load_backbone_weights,
)
from ltcl.models.resnet_cifar import CifarResNet, resnet8, resnet20, resnet32, resnet44, resnet56

__all__ = [
    "KNOWN_BACKBONES",
    "CifarResNet",
    "CosineClassifier",
    "LinearClassifier",
    "LongTailNetwork",
    "NetworkOutput",
    "ProjectionHead",
    "apply_trainable",
    "build_backbone",
    "build_network",
    "load_backbone_weights",
    "resnet8",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
]
