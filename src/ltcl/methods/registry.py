"""The method registry: ``loss.objective`` names -> :class:`~ltcl.methods.base.Objective` classes.

This is the one place that reads ``loss.objective``: a registered name, or ``CLS+CON`` (a classification loss and
a contrastive term joined by ``+``). :func:`resolve_config` types each used method's section and fills in its
defaults, so the saved config holds every value the run used; :func:`build_objective` builds the objective.

``loss.mixing`` names a registered mixing strategy of the classification term (``none`` by default; see
:mod:`ltcl.methods.mixing`); its section (``loss.mixup``) is typed like a method's.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ltcl.config import Config, ConfigError, from_dict, to_dict
from ltcl.data.samplers import SAMPLERS
from ltcl.methods.base import ROLES, Objective, ObjectiveSetup
from ltcl.methods.composite import ClassifyAndContrast
from ltcl.methods.mixing import NO_MIXING, Mixing
from ltcl.models import CLASSIFIERS, backbone_family, parse_finetune
from ltcl.plugins import load_plugins
from ltcl.registry import Registry

if TYPE_CHECKING:
    from torch import nn

OBJECTIVES: Registry[type[Objective]] = Registry("method", "loss.objective")
MIXINGS: Registry[type[Mixing]] = Registry("mixing strategy", "loss.mixing")


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Registers a method class under its ``name`` (usable as a class decorator).

    Raises:
        ValueError: not an :class:`Objective` subclass, no name, an unknown role, a ``Section`` that is not a
            dataclass, or a name or section name taken by another method.
    """
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ValueError(f"register_objective expects a subclass of ltcl.methods.Objective, got {cls!r}.")
    if "+" in cls.name:
        raise ValueError(f"A method name must not contain '+' (it joins two methods), got '{cls.name}'.")
    if cls.role not in ROLES:
        raise ValueError(f"{cls.__name__}.role must be one of {', '.join(ROLES)}, got {cls.role!r}.")
    if cls.Section is not None and not dataclasses.is_dataclass(cls.Section):
        raise ValueError(f"{cls.__name__}.Section must be a dataclass (the method's config section) or None.")
    _check_section_free(cls, cls.name)
    return OBJECTIVES.register(cls.name, cls)


def register_mixing(cls: type[Mixing]) -> type[Mixing]:
    """Registers a mixing strategy (``loss.mixing``) under its ``name`` (usable as a class decorator).

    Raises:
        ValueError: not a :class:`~ltcl.methods.mixing.Mixing` subclass, no name or the name ``none``, a
            ``Section`` that is not a dataclass, or a section name taken by a method or another strategy.
    """
    if not (isinstance(cls, type) and issubclass(cls, Mixing)):
        raise ValueError(f"register_mixing expects a subclass of ltcl.methods.mixing.Mixing, got {cls!r}.")
    if cls.name == NO_MIXING:
        raise ValueError(f"'{NO_MIXING}' is loss.mixing's value for no mixing; choose another name.")
    if cls.Section is not None and not dataclasses.is_dataclass(cls.Section):
        raise ValueError(f"{cls.__name__}.Section must be a dataclass (the strategy's config section) or None.")
    _check_section_free(cls, cls.name)
    return MIXINGS.register(cls.name, cls)


def _check_section_free(cls, name: str) -> None:
    """A section name belongs to one method or mixing strategy."""
    section = cls.config_section()
    entries = [*OBJECTIVES.items(), *MIXINGS.items()]
    owner = next((o for n, o in entries if o.config_section() == section and o.Section is not None and n != name), None)
    if cls.Section is not None and owner is not None:
        raise ValueError(f"The config section 'loss.{section}' of '{name}' belongs to '{owner.name}' already.")


def mixing_strategy(name: str) -> type[Mixing] | None:
    """The registered strategy of ``loss.mixing`` (None for ``none``).

    Raises:
        ConfigError: an unknown name, in one sentence listing the known ones.
    """
    if name == NO_MIXING:
        return None
    if name in MIXINGS:
        return MIXINGS.get(name)
    close = difflib.get_close_matches(name, [NO_MIXING, *MIXINGS], n=2)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"loss.mixing '{name}' is not a registered mixing strategy; known: {', '.join([NO_MIXING, *MIXINGS])}.{hint}"
    )


def method_parts(objective: str) -> tuple[type[Objective], ...]:
    """The registered classes that ``loss.objective`` is made of: one whole objective or classification loss, or a
    classification loss and a contrastive term (``bs+acl``).

    Raises:
        ConfigError: an unknown name, or parts in the wrong roles.
    """
    if objective in OBJECTIVES:
        cls = OBJECTIVES.get(objective)
        if cls.role == "contrastive":
            raise ConfigError(
                f"loss.objective '{objective}' is a contrastive term; join it to a classification loss, e.g. "
                f"bs+{objective}."
            )
        return (cls,)
    first, plus, second = objective.partition("+")
    if plus and first in OBJECTIVES and second in OBJECTIVES:
        parts = (OBJECTIVES.get(first), OBJECTIVES.get(second))
        if parts[0].role != "classification" or parts[1].role != "contrastive":
            raise ConfigError(
                f"loss.objective '{objective}': CLS+CON joins a classification loss ({_names('classification')}) "
                f"and a contrastive term ({_names('contrastive')})."
            )
        return parts
    combos = [f"{c}+{k}" for c in _names("classification").split(", ") for k in _names("contrastive").split(", ")]
    close = difflib.get_close_matches(objective, [*OBJECTIVES, *combos], n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"loss.objective '{objective}' is not a registered method ({', '.join(OBJECTIVES)}), nor a classification "
        f"loss ({_names('classification')}) joined by '+' to a contrastive term ({_names('contrastive')}).{hint}"
    )


def _names(role: str) -> str:
    return ", ".join(name for name, cls in OBJECTIVES.items() if cls.role == role)


def section_owners() -> dict[str, type[Objective] | type[Mixing]]:
    """Config section name -> the method or mixing strategy that owns it."""
    entries = [*OBJECTIVES.items(), *MIXINGS.items()]
    return {cls.config_section(): cls for _, cls in entries if cls.Section is not None}


def resolve_config(cfg: Config, *, with_plugins: bool = True) -> Config:
    """``cfg`` with the sections of the methods it uses typed, checked and completed with their defaults.

    The config's plugins are loaded first (they may register the objective); ``with_plugins=False`` skips that
    (a saved config whose plugins moved, compared after the new places were loaded). The backbone and the
    fine-tuning mode must be registered, and each method checks the settings it needs (``check_config``).
    Sections of registered methods (and mixing strategies) that ``loss.objective`` (``loss.mixing``) does not use
    are checked and then left out (the saved config holds only what the run used); a section no method or strategy
    owns is refused. Mixing applies to a classification loss: a whole objective (``gpaco``) refuses it. A method may
    first put in the part of the network that is the method itself (``Objective.adapt_config``). Idempotent.

    Raises:
        ConfigError: an unknown objective or section, or a bad value in a section (one sentence naming the key).
    """
    if with_plugins:
        load_plugins(cfg.plugins)
    backbone_family(cfg.model.backbone)  # an unknown backbone or fine-tuning mode fails here, before any data is read
    parse_finetune(cfg.model.finetune)
    SAMPLERS.get(cfg.data.sampler)
    CLASSIFIERS.get(cfg.model.classifier)
    parts = method_parts(cfg.loss.objective)
    mixing = mixing_strategy(cfg.loss.mixing)
    if mixing is not None and parts[0].role == "objective":
        raise ConfigError(
            f"loss.mixing {cfg.loss.mixing} mixes the inputs of a classification loss, but loss.objective "
            f"'{cfg.loss.objective}' is a whole objective: set loss.mixing=none, or use a classification loss "
            f"({_names('classification')}), alone or joined to a contrastive term."
        )
    if cfg.loss.label_smoothing > 0 and not parts[0].takes_label_smoothing:
        takers = ", ".join(sorted(n for n in OBJECTIVES if OBJECTIVES.get(n).takes_label_smoothing))
        raise ConfigError(
            f"loss.label_smoothing {cfg.loss.label_smoothing} applies to the classification losses {takers}, but "
            f"loss.objective '{cfg.loss.objective}' classifies with {parts[0].name}: set loss.label_smoothing=0."
        )
    owners = section_owners()
    typed = {}
    for name, values in cfg.loss.sections.items():
        if name not in owners:
            known = ", ".join(sorted(owners)) or "none"
            raise ConfigError(f"Unknown config section 'loss.{name}' (method and mixing sections: {known}).")
        typed[name] = from_dict(values, owners[name].Section, f"loss.{name}.")
    sections = {}
    for cls in parts:
        cfg = cls.adapt_config(cfg)
    for cls in [*parts, *([mixing] if mixing is not None else [])]:
        cls.check_config(cfg)
        if cls.Section is not None:
            name = cls.config_section()
            sections[name] = to_dict(typed.get(name) or cls.Section())
    return replace(cfg, loss=replace(cfg.loss, sections=sections))


def typed_section(cfg: Config, cls: type[Objective] | type[Mixing]):
    """The method's (or mixing strategy's) section of a resolved config as an instance of its ``Section`` (None
    without one)."""
    if cls.Section is None:
        return None
    values = cfg.loss.sections.get(cls.config_section(), {})
    return from_dict(values, cls.Section, f"loss.{cls.config_section()}.")


def uses_projections(cfg: Config) -> bool:
    """Whether the objective of ``cfg`` contrasts projections (the network then needs a projection head)."""
    return any(cls.needs_projections for cls in method_parts(cfg.loss.objective))


def second_sampler(cfg: Config) -> str | None:
    """The sampler of the second batch the objective of ``cfg`` asks for each step (BBN), or None."""
    asked = {cls.second_sampler for cls in method_parts(cfg.loss.objective)} - {None}
    return asked.pop() if asked else None


def balanced_logits(cfg: Config) -> bool:
    """Whether the evaluation logits of the objective of ``cfg`` are meant for a uniform label prior: those of its
    classification part (``CLS+CON``) or of the whole objective."""
    return method_parts(cfg.loss.objective)[0].balanced_logits


def uses_features(cfg: Config) -> bool:
    return any(cls.needs_features for cls in method_parts(cfg.loss.objective))


def build_objective(
    cfg: Config,
    class_counts: Sequence[int],
    *,
    feature_dim: int,
    gather_distributed: bool = False,
    load_network: Callable[[str], nn.Module] | None = None,
) -> Objective:
    """The training objective of a resolved config.

    Args:
        class_counts: (C,) training images per class.
        feature_dim: F, the backbone's feature size (the classifier's input).
        gather_distributed: contrast against the global batch under torch.distributed.
        load_network: see :class:`ObjectiveSetup` (the engine gives it).
    """
    cfg = resolve_config(cfg)
    parts = method_parts(cfg.loss.objective)
    projection_dim = cfg.model.projection_dim if any(c.needs_projections for c in parts) else 0
    if any(c.needs_projections for c in parts) and projection_dim <= 0:
        raise ConfigError(
            f"loss.objective '{cfg.loss.objective}' needs a projection head: set model.projection_dim > 0."
        )
    base = ObjectiveSetup(
        class_counts=tuple(int(c) for c in class_counts),
        loss=cfg.loss,
        projection_dim=projection_dim,
        feature_dim=feature_dim,
        hidden_dim=cfg.model.projection_hidden,
        epochs=cfg.optim.epochs,
        optim=cfg.optim,
        num_views=cfg.views.num_views,
        gather_distributed=gather_distributed,
        load_network=load_network,
    )
    setups = [replace(base, section=typed_section(cfg, cls)) for cls in parts]
    if parts[0].role == "objective":
        return parts[0](setups[0])
    strategy = mixing_strategy(cfg.loss.mixing)
    mixing = None
    if strategy is not None:
        mixing = strategy(typed_section(cfg, strategy), base.class_counts, seed=cfg.train.seed)
    return ClassifyAndContrast(base, [cls(s) for cls, s in zip(parts, setups)], mixing=mixing)
