"""The optimiser of a run: SGD or AdamW over parameter groups (backbone / head, decayed / not), and its learning
rates.

Groups. A parameter belongs to the backbone when it lives under the network's ``backbone`` module; everything
else that trains (classifier, projection head, a method's own modules such as BCL's prototype head) is the head.
``optim.backbone_lr_scale`` multiplies the backbone's learning rate. ``optim.weight_decay_on: weights_only`` takes
normalisation parameters, biases (every parameter with ndim <= 1) and the embeddings that a module's
``no_weight_decay()`` names (timm: ``pos_embed``, ``cls_token``; OpenCLIP: ``positional_embedding``,
``class_embedding``) out of the weight decay, as timm's ``param_groups_weight_decay`` does; ``all`` decays every
parameter, as the paper's ResNet recipes (and GPaCo's code) do; ``auto`` is ``all`` for SGD and ``weights_only``
for AdamW, so that existing SGD runs are unchanged. A setting that needs one group only (SGD, scale 1, ``all``)
builds exactly the single group earlier versions built, so their checkpoints' optimiser states still load.

Every group carries ``lr_scale``; :func:`set_learning_rates` sets ``lr = schedule(step) * lr_scale`` before every
step, so warm-up and decay scale every group alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ltcl.config import OptimConfig

BACKBONE = "backbone"  # the network's attribute that holds the backbone (LongTailNetwork.backbone)


def decay_rule(optim: OptimConfig) -> str:
    """``all`` or ``weights_only``: ``optim.weight_decay_on`` with ``auto`` resolved by the optimiser."""
    if optim.weight_decay_on != "auto":
        return optim.weight_decay_on
    return "weights_only" if optim.name == "adamw" else "all"


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that modules of ``model`` exempt from weight decay through timm's
    ``no_weight_decay()`` protocol (a set of names relative to that module; a name may also be a submodule, all of
    whose parameters are then exempt)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        exempt = getattr(module, "no_weight_decay", None)
        if not callable(exempt):
            continue
        own = {f"{prefix}.{n}" if prefix else n for n in exempt()}
        for name, _ in module.named_parameters(prefix=prefix):
            if name in own or any(name.startswith(f"{n}.") for n in own):
                names.add(name)
    return names


def is_decay_exempt(name: str, parameter: nn.Parameter, listed: set[str]) -> bool:
    """timm's rule: a normalisation weight or a bias (ndim <= 1), or a parameter its module names."""
    return parameter.ndim <= 1 or name in listed


@dataclass(frozen=True)
class GroupSpec:
    """One parameter group: ``part`` backbone | head, ``decay`` whether weight decay applies, its lr scale."""

    part: str
    decay: bool
    lr_scale: float

    @property
    def label(self) -> str:
        return f"{self.part}{'' if self.decay else ' (no decay)'}"


def parameter_groups(
    optim: OptimConfig, model: nn.Module, extra: Iterable[tuple[str, nn.Parameter]] = ()
) -> tuple[list[dict], list[GroupSpec]]:
    """The optimiser's parameter groups over the trainable parameters of ``model`` and ``extra`` (the objective's
    own, named; always head).

    Returns:
        The groups (``params``, ``weight_decay``, ``lr_scale``, in a fixed order: backbone before head, decayed
        before exempt; empty groups left out) and what each is, for the run header. One group when the settings
        treat every parameter alike (the layout of checkpoints written before groups existed).
    """
    rule = decay_rule(optim)
    listed = no_weight_decay_names(model) if rule == "weights_only" else set()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    named += [(f"objective.{n}", p) for n, p in extra if p.requires_grad]
    split_parts = optim.backbone_lr_scale != 1.0
    buckets: dict[GroupSpec, list[nn.Parameter]] = {}
    for name, parameter in named:
        part = "backbone" if name.startswith(f"{BACKBONE}.") else "head"
        decay = rule == "all" or not is_decay_exempt(name, parameter, listed)
        spec = GroupSpec(
            part if split_parts else "all", decay, optim.backbone_lr_scale if split_parts and part == "backbone" else 1
        )
        buckets.setdefault(spec, []).append(parameter)
    order = sorted(buckets, key=lambda s: (s.part != "backbone", s.part != "all", not s.decay))
    groups = [
        {"params": buckets[s], "weight_decay": optim.weight_decay if s.decay else 0.0, "lr_scale": s.lr_scale}
        for s in order
    ]
    return groups, order


def build_optimizer(
    optim: OptimConfig, model: nn.Module, extra: Iterable[tuple[str, nn.Parameter]] = ()
) -> tuple[torch.optim.Optimizer, list[GroupSpec]]:
    """``optim.name`` over :func:`parameter_groups`; the learning rates are set before every step
    (:func:`set_learning_rates`). Returns the optimiser and its groups' descriptions."""
    groups, specs = parameter_groups(optim, model, extra)
    if optim.name == "adamw":
        # Decoupled weight decay (Loshchilov & Hutter): p -= lr * wd * p, apart from the adaptive step. Fused: the
        # step counters then live on the device and are read there; torch's default (foreach) reads each
        # parameter's counter on the host every step (a wait when they are on the device).
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            groups,
            lr=optim.lr,
            betas=tuple(optim.betas),
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            fused=True,
        )
    else:
        optimizer = torch.optim.SGD(
            groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, nesterov=optim.nesterov
        )
    return optimizer, specs


def set_learning_rates(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate: the schedule's ``lr`` times the group's ``lr_scale`` (1 when absent: a group
    restored from a checkpoint written before groups had scales keeps the run's single rate)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def describe_optimizer(optim: OptimConfig, specs: list[GroupSpec], batch_size: int, ema_decay: float) -> str:
    """The header's optimiser line: name, the groups with their lr and decay, accumulation, clipping, EMA."""
    if optim.name == "adamw":
        name = f"AdamW betas {tuple(optim.betas)} eps {optim.eps}"
    else:
        name = f"SGD momentum {optim.momentum}" + (" nesterov" if optim.nesterov else "")
    groups = ", ".join(
        f"{s.label} lr {optim.lr * s.lr_scale:.4g} wd {optim.weight_decay if s.decay else 0.0}" for s in specs
    )
    accumulate = optim.accumulate_steps
    batch = f"batch {batch_size}" + (
        f" in {accumulate} micro-batches of {batch_size // accumulate}" if accumulate > 1 else ""
    )
    clip = f"clip grad norm {optim.clip_grad_norm}" if optim.clip_grad_norm > 0 else "no clipping"
    ema = f"EMA {ema_decay} (evaluated)" if ema_decay > 0 else "no EMA"
    return f"{name}; groups: {groups}; {batch}; {clip}; {ema}"
