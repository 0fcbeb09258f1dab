"""What sits on the backbone's features: the contrastive projection head and the classifiers.

Classifiers are a registry (``model.classifier``): ``linear`` and ``cosine`` here, others where they are defined
(a method's own, a plugin's). Every classifier maps (B, F) features to (B, C) logits, has a ``weight`` (C, F)
(BCL's prototypes and the zero-shot head read it) and an ``eval_bias`` (C,) buffer added to its logits in
evaluation mode only: a method whose test-time rule differs from its training logits (LADE's PC-softmax, a
post-hoc logit adjustment) sets it, and every checkpoint then predicts as the method intends, in ``ltcl eval``,
``ltcl predict`` or a user's own code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ltcl.errors import UserError
from ltcl.registry import Registry


class ProjectionHead(nn.Sequential):
    """Linear-(BatchNorm)-ReLU-Linear MLP, or a single Linear when ``hidden_dim`` is 0.

    Maps (B, in_dim) features to (B, out_dim) projections, not normalised (the network normalises them).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = False) -> None:
        if in_dim <= 0 or out_dim <= 0 or hidden_dim < 0:
            raise UserError(
                f"ProjectionHead needs positive in/out sizes and hidden size >= 0, got "
                f"in_dim={in_dim}, hidden_dim={hidden_dim}, out_dim={out_dim}."
            )
        if hidden_dim == 0:
            layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        else:
            # The BatchNorm makes the first bias redundant.
            layers = [nn.Linear(in_dim, hidden_dim, bias=not batch_norm)]
            layers += [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
            layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
        super().__init__(*layers)


class EvalBias:
    """Mixin: an ``eval_bias`` (C,) buffer added to the logits in evaluation mode (zeros: no change).

    Checkpoints written before the buffer existed load with zeros."""

    def _add_eval_bias(self, num_classes: int) -> None:
        self.register_buffer("eval_bias", torch.zeros(num_classes))

    def _at_eval(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.training else logits + self.eval_bias.to(logits.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "eval_bias", torch.zeros_like(self.eval_bias))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LinearClassifier(EvalBias, nn.Linear):
    """Affine classifier: (B, in_dim) features -> (B, num_classes) logits ``f W^T + b`` (plus ``eval_bias`` in
    evaluation mode)."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__(in_dim, num_classes)
        self._add_eval_bias(num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self._at_eval(super().forward(features))


class CosineClassifier(EvalBias, nn.Module):
    """Cosine classifier: ``logits = scale * normalize(f) @ normalize(W)^T``, no bias.

    Args:
        in_dim: feature size F.
        num_classes: C.
        scale: fixed logit scale (> 0); cosines lie in [-1, 1], so the scale sets how peaked softmax can be.

    Shapes: (B, F) features -> (B, C) logits; ``weight`` is (C, F).
    """

    def __init__(self, in_dim: int, num_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        if not scale > 0:
            raise UserError(f"CosineClassifier scale (model.cosine_scale) must be positive, got {scale}.")
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # the nn.Linear default; only directions matter
        self._add_eval_bias(num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self._at_eval(self.scale * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).t())

    def extra_repr(self) -> str:
        return f"in_dim={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, scale={self.scale}"


@dataclass(frozen=True)
class ClassifierKind:
    """One registered classifier (``model.classifier``): ``build(in_dim, num_classes, model_cfg)`` returns the
    module; ``paper`` says where it comes from."""

    name: str
    build: Callable[[int, int, Any], nn.Module]
    paper: str = ""


CLASSIFIERS: Registry[ClassifierKind] = Registry("classifier", "model.classifier")


def register_classifier(kind: ClassifierKind) -> ClassifierKind:
    return CLASSIFIERS.register(kind.name, kind)


register_classifier(ClassifierKind("linear", lambda f, c, cfg: LinearClassifier(f, c), "an affine map"))
register_classifier(
    ClassifierKind(
        "cosine",
        lambda f, c, cfg: CosineClassifier(f, c, cfg.cosine_scale),
        "normalised features and weights, times model.cosine_scale",
    )
)
