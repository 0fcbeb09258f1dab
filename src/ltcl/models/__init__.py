"""Backbones (a registry of families), projection head, classifiers, fine-tuning modes and the network that
combines them."""

from ltcl.data.inputs import InputSpec
from ltcl.models.backbones import KNOWN_BACKBONES, build_backbone, input_spec, weights_origin
from ltcl.models.causal import CausalNormClassifier
from ltcl.models.finetune import FINETUNE_MODES, FinetuneMode, ParameterCounts, apply_finetune, parse_finetune
from ltcl.models.heads import (
    CLASSIFIERS,
    ClassifierKind,
    CosineClassifier,
    LinearClassifier,
    ProjectionHead,
    register_classifier,
)
from ltcl.models.lora import LoRADelta, add_lora
from ltcl.models.network import LongTailNetwork, NetworkOutput, build_network
from ltcl.models.refit_heads import DisAlignClassifier, NearestClassMeanClassifier
from ltcl.models.registry import BACKBONES, BackboneRequest, BuiltBackbone, backbone_family, register_backbone
from ltcl.models.resnet_cifar import CifarResNet, resnet8, resnet20, resnet32, resnet44, resnet56
from ltcl.models.weights import load_backbone_weights

__all__ = [
    "BACKBONES",
    "CLASSIFIERS",
    "ClassifierKind",
    "register_classifier",
    "FINETUNE_MODES",
    "KNOWN_BACKBONES",
    "BackboneRequest",
    "BuiltBackbone",
    "CausalNormClassifier",
    "CifarResNet",
    "CosineClassifier",
    "DisAlignClassifier",
    "FinetuneMode",
    "InputSpec",
    "LinearClassifier",
    "LoRADelta",
    "LongTailNetwork",
    "NearestClassMeanClassifier",
    "NetworkOutput",
    "ParameterCounts",
    "ProjectionHead",
    "add_lora",
    "apply_finetune",
    "backbone_family",
    "build_backbone",
    "build_network",
    "input_spec",
    "load_backbone_weights",
    "parse_finetune",
    "register_backbone",
    "resnet8",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "weights_origin",
]
