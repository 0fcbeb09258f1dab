"""Which parameters train: the fine-tuning mode (``model.finetune``) and name prefixes (``model.trainable``).

Modes act on the backbone only; the projection head and the classifier always train:

Each mode is registered (``FINETUNE_MODES``, listed by ``ltcl methods``):

- ``full``: every backbone parameter trains.
- ``bitfit`` (Ben Zaken et al. 2022): only biases and the parameters of normalisation layers train.
- ``lora:R``: the backbone is frozen and rank-R updates of its linear maps train (:mod:`ltcl.models.lora`).
- ``adaptformer[:R]``, ``vpt_shallow[:N]``, ``vpt_deep[:N]``, ``ssf``: the backbone, a timm or OpenCLIP vision
  transformer, is frozen and adapters added to it train (:mod:`ltcl.models.adapters`); without ``:R`` / ``:N``
  they take LIFT's defaults (AdaptFormer's bottleneck R = 2^int(log2(C / (2 * depth))) for C classes; N = 10).

What trains in the backbone of timm ``vit_base_patch16_224`` (random init, 1000 classes: AdaptFormer's R = 32),
from ``python benchmarks/finetune_param_counts.py``; the heads train in every mode and are not counted:

=============== =========== ======================== =======
model.finetune  trains      of (backbone + adapters) share
=============== =========== ======================== =======
full            85,798,656  85,798,656               100%
bitfit          122,112     85,798,656               0.142%
lora:8          1,179,648   86,978,304               1.356%
adaptformer     617,868     86,416,524               0.715%
vpt_shallow:10  7,680       85,806,336               0.009%
vpt_deep:10     92,160      85,890,816               0.107%
ssf             202,752     86,001,408               0.236%
=============== =========== ======================== =======

``model.trainable`` prefixes then restrict the backbone further: a backbone parameter trains only when the
mode allows it and a prefix matches it. Frozen BatchNorm layers keep their running statistics (see
:meth:`ltcl.models.network.LongTailNetwork.train`); under BitFit they train with their affine parameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ltcl.config import ModelConfig
from ltcl.errors import UserError
from ltcl.models.adapters import LIFT_LENGTH, add_adaptformer, add_ssf, add_vpt, lift_bottleneck
from ltcl.models.lora import add_lora
from ltcl.registry import Registry

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)
# Normalisation layers of timm and OpenCLIP that are not torch subclasses (timm's RmsNorm, SimpleNorm, ...).
_NORM_NAME = re.compile(r"Norm(\d*d|Act\d*d?|Fp32)?$")
HEADS = ("projection", "classifier")


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter elements of a model: how many train, how many there are."""

    trainable: int
    total: int


@dataclass(frozen=True)
class FinetuneMode:
    """One registered fine-tuning mode (``model.finetune``).

    Attributes:
        name: the mode, as written before any ``:N`` argument.
        select: ``(backbone, argument, model_cfg) -> names`` of the backbone parameters that train; it may add
            parameters to the backbone first (LoRA's factors).
        argument: what ``:N`` means ("" when the mode takes none), e.g. "rank R" (its last word is the letter).
        paper: where the mode comes from.
        default: ``(backbone, num_classes) -> N``, the argument when ``:N`` is left out; None: it must be given.
    """

    name: str
    select: Callable[[nn.Module, int, ModelConfig], set[str]]
    argument: str = ""
    paper: str = ""
    default: Callable[[nn.Module, int], int] | None = None

    @property
    def usage(self) -> str:
        """How the mode is written: "full", "lora:R", "adaptformer[:R]" (an optional argument)."""
        if not self.argument:
            return self.name
        letter = self.argument.split()[-1]
        return f"{self.name}[:{letter}]" if self.default else f"{self.name}:{letter}"


FINETUNE_MODES: Registry[FinetuneMode] = Registry("fine-tuning mode", "model.finetune")


def register_finetune_mode(mode: FinetuneMode) -> FinetuneMode:
    return FINETUNE_MODES.register(mode.name, mode)


def parse_finetune(value: str) -> tuple[FinetuneMode, int]:
    """``"full"`` -> (full, 0), ``"lora:8"`` -> (lora, 8): the registered mode and its argument (0 when an
    optional argument is left out: ``"adaptformer"`` -> (adaptformer, 0); :func:`apply_finetune` fills it in).

    Raises:
        UserError: an unknown mode, or a missing, extra or non-positive argument.
    """
    name, colon, argument = value.partition(":")
    if name not in FINETUNE_MODES:
        raise UserError(FINETUNE_MODES.unknown(value))
    mode = FINETUNE_MODES.get(name)
    if mode.argument and mode.default and not colon:
        return mode, 0
    if mode.argument and not (argument.isdigit() and int(argument) >= 1):
        letter = mode.argument.split()[-1]
        raise UserError(f"model.finetune {name}:{letter} takes a {mode.argument} >= 1, got '{value}'.")
    if not mode.argument and colon:
        raise UserError(f"model.finetune {name} takes no argument, got '{value}'.")
    return mode, int(argument or 0)


def _matches(name: str, prefix: str) -> bool:
    # Whole name components only: "backbone.layer3.3" must not also train "backbone.layer3.30" (ResNet-152).
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def _check_prefixes(named: Sequence[tuple[str, nn.Parameter]], prefixes: Sequence[str], allowed: tuple) -> None:
    for prefix in prefixes:
        if not any(_matches(name, prefix) for name, _ in named) and not any(_matches(prefix, a) for a in allowed):
            roots = sorted({name.split(".")[0] for name, _ in named})
            raise UserError(
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
        model: a :class:`~ltcl.models.network.LongTailNetwork` (anything with a ``backbone`` attribute; a
            ``num_classes`` attribute sets the default of a mode whose argument depends on it).
        model_cfg: reads ``finetune``, ``lora_alpha`` and ``trainable``.

    Returns:
        Trainable and total parameter elements (LoRA factors and adapters included).

    Raises:
        UserError: a bad mode, LoRA on a backbone without linear layers, an adapter on a backbone that is not a
            vision transformer, a prefix matching nothing.
    """
    mode, argument = parse_finetune(model_cfg.finetune)
    prefixes = list(model_cfg.trainable)
    # Everything is checked before anything changes, so a refused call leaves the model as it was.
    _check_prefixes(list(model.named_parameters()), prefixes, HEADS)
    if argument == 0 and mode.default is not None:
        argument = mode.default(model.backbone, int(getattr(model, "num_classes", 0)))
    allowed = mode.select(model.backbone, argument, model_cfg)
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


register_finetune_mode(
    FinetuneMode("full", lambda backbone, _, __: {n for n, _ in backbone.named_parameters()}, paper="every weight")
)
register_finetune_mode(
    FinetuneMode(
        "bitfit", lambda backbone, _, __: bitfit_names(backbone), paper="Ben Zaken et al., ACL 2022 (biases, norms)"
    )
)
register_finetune_mode(
    FinetuneMode(
        "lora",
        lambda backbone, rank, cfg: set(add_lora(backbone, rank, cfg.lora_alpha or float(rank))),
        argument="rank R",
        paper="Hu et al., ICLR 2022 (rank-R updates of every linear map)",
    )
)
register_finetune_mode(
    FinetuneMode(
        "adaptformer",
        lambda backbone, width, _: set(add_adaptformer(backbone, width)),
        argument="bottleneck width R",
        paper="Chen et al., NeurIPS 2022 (a bottleneck MLP beside each ViT block's MLP; R as LIFT: "
        "2^int(log2(C / (2 * depth))))",
        default=lift_bottleneck,
    )
)
for _deep in (False, True):
    register_finetune_mode(
        FinetuneMode(
            f"vpt_{'deep' if _deep else 'shallow'}",
            lambda backbone, count, _, deep=_deep: set(add_vpt(backbone, count, deep)),
            argument="prompt count N",
            paper=f"Jia et al., ECCV 2022 (N learnable prompt tokens "
            f"{'at every ViT block' if _deep else 'at the ViT input'}; N = {LIFT_LENGTH} as LIFT)",
            default=lambda backbone, _: LIFT_LENGTH,
        )
    )
register_finetune_mode(
    FinetuneMode(
        "ssf",
        lambda backbone, _, __: set(add_ssf(backbone)),
        paper="Lian et al., NeurIPS 2022 (per-channel scale and shift after each ViT block's norms and linear maps)",
    )
)
