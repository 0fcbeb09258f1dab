"""Backbones, projection head, classifiers, fine-tuning modes and the network that combines them."""

from ltcl.models.backbones import KNOWN_BACKBONES, build_backbone, input_spec
from ltcl.models.finetune import ParameterCounts, apply_finetune, apply_trainable, parse_finetune
from ltcl.models.heads import CosineClassifier, LinearClassifier, ProjectionHead
from ltcl.models.inputs import InputSpec
from ltcl.models.lora import LoRADelta, add_lora
from ltcl.models.network import LongTailNetwork, NetworkOutput, build_network
from ltcl.models.resnet_cifar import CifarResNet, resnet8, resnet20, resnet32, resnet44, resnet56
from ltcl.models.weights import load_backbone_weights

__all__ = [
    "KNOWN_BACKBONES",
    "CifarResNet",
    "CosineClassifier",
    "InputSpec",
    "LinearClassifier",
    "LoRADelta",
    "LongTailNetwork",
    "NetworkOutput",
    "ParameterCounts",
    "ProjectionHead",
    "add_lora",
    "apply_finetune",
    "apply_trainable",
    "build_backbone",
    "build_network",
    "input_spec",
    "load_backbone_weights",
    "parse_finetune",
    "resnet8",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
]
