"""The backbone registry: ``model.backbone`` names -> how to build them and what input they expect.

A :class:`BackboneFamily` owns a set of exact names (``resnet32``) or every name under a prefix (``timm/``). Built-in
families register in :mod:`ltcl.models.backbones`; ``ltcl.register_backbone`` adds a user's own from a plugin file.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from ltcl.data.inputs import InputSpec
from ltcl.errors import UserError
from ltcl.registry import Registry


@dataclass(frozen=True)
class BackboneRequest:
    """What a family's builder is asked for.

    Attributes:
        name: ``model.backbone`` as written (``timm/vit_small_patch16_224``).
        arch: the name inside the family (``vit_small_patch16_224``; the name itself for exact names).
        pretrained: ``model.pretrained``: False, True or a tag.
        kwargs: ``model.backbone_kwargs``.
        class_names: the C class names when the zero-shot head asks for text embeddings, else None.
    """

    name: str
    arch: str
    pretrained: bool | str = False
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    class_names: Sequence[str] | None = None


class BuiltBackbone(NamedTuple):
    """A built feature extractor: ``module`` maps (B, 3, H, W) images to (B, feature_dim) features;
    ``text_weights`` (C, feature_dim) unit rows for a zero-shot classifier when the family provides them."""

    module: nn.Module
    feature_dim: int
    text_weights: torch.Tensor | None = None


@dataclass(frozen=True)
class BackboneFamily:
    """One registered family of backbones.

    Attributes:
        name: the family's name, listed by ``ltcl methods``.
        build: ``BackboneRequest -> BuiltBackbone`` (or a ``(module, feature_dim)`` pair).
        names: the exact ``model.backbone`` names it builds (empty for a prefix family).
        prefix: every name starting with it belongs to the family ("" for an exact-name family).
        input_spec: ``BackboneRequest -> InputSpec | None``: the input size and normalisation it was pretrained
            with (None: it defines none, the views must give sizes in pixels).
        weights_prefix: the key prefix of its weights inside a local file that holds a whole model ("visual.").
        paper: where the architecture comes from.
        describe_pretrained: ``BackboneRequest -> str``: where ``model.pretrained`` weights come from, for the run
            header ("timm pretrained <hub id> (hub cache)"); None: "<family> pretrained <value>".
    """

    name: str
    build: Callable[[BackboneRequest], BuiltBackbone | tuple[nn.Module, int]]
    names: tuple[str, ...] = ()
    prefix: str = ""
    input_spec: Callable[[BackboneRequest], InputSpec | None] | None = None
    weights_prefix: str = ""
    paper: str = ""
    describe_pretrained: Callable[[BackboneRequest], str] | None = None

    def request(self, name: str, pretrained: bool | str = False, kwargs=None, class_names=None) -> BackboneRequest:
        arch = name[len(self.prefix) :] if self.prefix else name
        return BackboneRequest(name, arch, pretrained, dict(kwargs or {}), class_names)


BACKBONES: Registry[BackboneFamily] = Registry("backbone family", "model.backbone")


def register_backbone(
    name: str,
    build: Callable[[BackboneRequest], BuiltBackbone | tuple[nn.Module, int]] | None = None,
    *,
    names: Sequence[str] = (),
    prefix: str = "",
    input_spec: Callable[[BackboneRequest], InputSpec | None] | None = None,
    weights_prefix: str = "",
    paper: str = "",
    describe_pretrained: Callable[[BackboneRequest], str] | None = None,
):
    """Registers a backbone family; with ``build`` omitted, returns a decorator for the builder.

    ``register_backbone("tiny_cnn", build)`` makes ``model.backbone: tiny_cnn`` call ``build(request)``, which
    returns ``(module, feature_dim)`` or a :class:`BuiltBackbone`. ``names`` or ``prefix`` let one family own
    several names (default: the family's own name).
    """
    if build is None:
        return lambda fn: register_backbone(
            name,
            fn,
            names=names,
            prefix=prefix,
            input_spec=input_spec,
            weights_prefix=weights_prefix,
            paper=paper,
            describe_pretrained=describe_pretrained,
        )
    owned = tuple(names) or (() if prefix else (name,))
    for other_name, other in BACKBONES.items():
        clash = set(owned) & set(other.names) or (prefix and prefix == other.prefix)
        if clash and other_name != name:
            raise ValueError(f"Backbone family '{name}' claims names of '{other_name}' ({sorted(clash) or prefix}).")
    family = BackboneFamily(name, build, owned, prefix, input_spec, weights_prefix, paper, describe_pretrained)
    BACKBONES.register(name, family)
    return build


def backbone_family(name: str) -> BackboneFamily:
    """The family that builds ``model.backbone`` ``name``.

    Raises:
        UserError: no family owns the name.
    """
    for _, family in BACKBONES.items():
        if name in family.names or (family.prefix and name.startswith(family.prefix)):
            return family
    exact = [n for _, f in BACKBONES.items() for n in f.names]
    prefixes = [f"{f.prefix}<name>" for _, f in BACKBONES.items() if f.prefix]
    close = difflib.get_close_matches(name, exact, n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UserError(
        f"Unknown backbone '{name}' (model.backbone); expected one of {', '.join(exact)}, or "
        f"{' or '.join(prefixes)}.{hint}"
    )


def build_registered(family: BackboneFamily, request: BackboneRequest) -> BuiltBackbone:
    """Runs the family's builder and checks what it returns."""
    built = family.build(request)
    if isinstance(built, tuple) and not isinstance(built, BuiltBackbone):
        built = BuiltBackbone(*built)
    if not isinstance(built, BuiltBackbone) or not isinstance(built.module, nn.Module):
        raise ValueError(f"The builder of backbone family '{family.name}' must return (module, feature_dim).")
    if not isinstance(built.feature_dim, int) or built.feature_dim <= 0:
        raise ValueError(f"Backbone family '{family.name}' gave feature_dim {built.feature_dim!r}; expected > 0.")
    return built
