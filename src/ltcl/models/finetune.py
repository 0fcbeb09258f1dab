"""Which parameters train: the fine-tuning mode (``model.finetune``) and name prefixes (``model.trainable``).

Modes act on the backbone only; the projection head and the classifier always train:

- ``full``: every backbone parameter trains.
- ``bitfit`` (Ben Zaken et al. 2022): only biases and the parameters of normalisation layers train.
- ``lora:R``: the backbone is frozen and rank-R updates of its linear maps train (:mod:`ltcl.models.lora`).

``model.trainable`` prefixes then restrict the backbone further: a backbone parameter trains only when the
mode allows it and a prefix matches it. Frozen BatchNorm layers keep their running statistics (see
:meth:`ltcl.models.network.LongTailNetwork.train`); under BitFit they train with their affine parameters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ltcl.config import ModelConfig
from ltcl.models.lora import add_lora

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)
# Normalisation layers of timm and OpenCLIP that are not torch subclasses (timm's RmsNorm, SimpleNorm, ...).
_NORM_NAME = re.compile(r"Norm(\d*d|Act\d*d?|Fp32)?$")
HEADS = ("projection", "classifier")


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter elements of a model: how many train, how many there are."""

    trainable: int
    total: int


def parse_finetune(value: str) -> tuple[str, int]:
    """``"full"`` -> ("full", 0), ``"bitfit"`` -> ("bitfit", 0), ``"lora:8"`` -> ("lora", 8)."""
    mode, _, rank = value.partition(":")
    if (mode in ("full", "bitfit") and not rank) or (mode == "lora" and rank.isdigit() and int(rank) >= 1):
        return mode, int(rank or 0)
    raise ValueError(f"model.finetune must be full, bitfit or lora:R with a rank R >= 1, got '{value}'.")


def _matches(name: str, prefix: str) -> bool:
    # Whole name components only: "backbone.layer3.3" must not also train "backbone.layer3.30" (ResNet-152).
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def _check_prefixes(named: Sequence[tuple[str, nn.Parameter]], prefixes: Sequence[str], allowed: tuple) -> None:
    for prefix in prefixes:
        if not any(_matches(name, prefix) for name, _ in named) and not any(_matches(prefix, a) for a in allowed):
            roots = sorted({name.split(".")[0] for name, _ in named})
            raise ValueError(
                f"model.trainable prefix '{prefix}' matches no parameter (names start with {', '.join(roots)})."
            )


def bitfit_names(backbone: nn.Module) -> set[str]:
    """Names (relative to ``backbone``) of its biases and of the parameters of its normalisation layers."""
    # "bias" of linear and conv layers; "in_proj_bias" of nn.MultiheadAttention, "q_bias" of BEiT-style attention
    names = {name for name, _ in backbone.named_parameters() if re.search(r"(^|[._])bias$", name)}
    for module_name, module in backbone.named_modules():
        if isinstance(module, _NORMS) or _NORM_NAME.search(type(module).__name__):
            prefix = f"{module_name}." if module_name else ""
            names |= {prefix + name for name, _ in module.named_parameters(recurse=False)}
    return names


def apply_finetune(model: nn.Module, model_cfg: ModelConfig) -> ParameterCounts:
    """Sets ``requires_grad`` of every parameter from ``model.finetune`` and ``model.trainable``.

    Call it once, after :func:`~ltcl.models.network.build_network` and before wrapping the model in DDP or
    building the optimiser (LoRA adds parameters). Prefixes naming a head ("projection", "classifier") are
    accepted even when the network has no projection head: heads train anyway.

    Args:
        model: a :class:`~ltcl.models.network.LongTailNetwork` (anything with a ``backbone`` attribute).
        model_cfg: reads ``finetune``, ``lora_alpha`` and ``trainable``.

    Returns:
        Trainable and total parameter elements (LoRA factors included).

    Raises:
        ValueError: a bad mode, LoRA on a backbone without linear layers, a prefix matching nothing.
    """
    mode, rank = parse_finetune(model_cfg.finetune)
    if model_cfg.lora_alpha < 0:
        raise ValueError(f"model.lora_alpha must be >= 0 (0: the rank), got {model_cfg.lora_alpha}.")
    prefixes = list(model_cfg.trainable)
    # Everything is checked before anything changes, so a refused call leaves the model as it was.
    _check_prefixes(list(model.named_parameters()), prefixes, HEADS)
    if mode == "lora":
        allowed = set(add_lora(model.backbone, rank, model_cfg.lora_alpha or float(rank)))
    elif mode == "bitfit":
        allowed = bitfit_names(model.backbone)
    else:
        allowed = {name for name, _ in model.backbone.named_parameters()}
    for name, param in model.named_parameters():
        if not name.startswith("backbone."):
            param.requires_grad_(True)  # the heads always train
            continue
        trains = name.removeprefix("backbone.") in allowed
        param.requires_grad_(trains and (not prefixes or any(_matches(name, p) for p in prefixes)))
    model.train(model.training)  # frozen BatchNorm layers switch to eval at once
    return count_parameters(model)


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Trainable and total parameter elements of ``model``."""
    params = list(model.parameters())
    return ParameterCounts(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def apply_trainable(model: nn.Module, prefixes: Sequence[str]) -> int:
    """Freezes every parameter outside ``prefixes`` (model.trainable); an empty list leaves all as they are.

    The older interface, kept for compatibility: unlike :func:`apply_finetune` the prefixes apply to the heads
    too. A prefix matches whole dotted components of ``model.named_parameters()`` names ("backbone.layer4.2"
    trains "backbone.layer4.2.conv1.weight" but not "backbone.layer4.20..."). Call it before wrapping the model
    in DDP; the model's train/eval mode is re-applied so that frozen BatchNorm layers switch to eval at once.

    Returns:
        The number of trainable parameter elements.
    """
    named = list(model.named_parameters())
    if prefixes:
        _check_prefixes(named, prefixes, ())
        for name, param in named:
            param.requires_grad_(any(_matches(name, prefix) for prefix in prefixes))
        model.train(model.training)
    return sum(p.numel() for _, p in named if p.requires_grad)
