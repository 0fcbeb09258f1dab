"""``tau_norm``: tau-normalised classifier (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition", ICLR 2020, Sec. 4): the first stage's weight rows divided by a power of their norm,
``w_j <- w_j / ||w_j||^tau``, which shrinks the head classes' large weights; nothing trains.

tau is chosen on the VALIDATION split from a grid (the authors' ``tau_norm.py`` scans ``np.linspace(0, 2, 21)`` and
prints each tau's accuracy on the split it is given, the test set included: here the choice is the best top-1
accuracy on the validation split, the smallest tau on a tie, and the test split is scored once, for the chosen
tau). A run without a validation split gets one (``--set data.val_per_class=N`` on CIFAR and the digits, a
``data.val_list`` for the split-list datasets) or a fixed tau (``--set decouple.tau=T``).

As in the authors' script (``dotproduct_similarity(feat, weights)``) the logits are ``f . w_j`` without the first
stage's bias (``bias: drop``); ``bias: keep`` adds ``b_j`` unchanged. The result is a ``linear`` classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ltcl.config.checks import check
from ltcl.decouple.base import RefitSetup, Refitter, linear_weights, register_refitter
from ltcl.errors import UserError

GRID = check(lambda v: len(v) > 0 and all(x >= 0 for x in v), "a non-empty list of numbers >= 0")


def tau_normalized(weight: Tensor, tau: float) -> Tensor:
    """``w_j / ||w_j||^tau`` for every row j of ``weight`` (C, F); a zero row stays zero."""
    norms = weight.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, weight / norms.clamp_min(torch.finfo(weight.dtype).tiny) ** tau, weight)


@dataclass
class TauNormSection:
    """``decouple.*`` for tau_norm; the grid of the authors' ``tau_norm.py`` (``np.linspace(0, 2, 21)``)."""

    tau_grid: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(21)], metadata=GRID)
    tau: float = -1.0  # >= 0: this tau, no choice; negative: chosen on the validation split from tau_grid
    bias: Literal["drop", "keep"] = "drop"  # tau_norm.py: logits = feat @ weights.T, no bias


@register_refitter
class TauNormalization(Refitter):
    """The first stage's linear classifier with its rows divided by ``||w_j||^tau``, tau chosen on validation."""

    name = "tau_norm"
    paper = "Kang et al., Decoupling (tau-normalisation), ICLR 2020"
    code = "facebookresearch/classifier-balancing: tau_norm.py (pnorm, dotproduct_similarity)"
    Section = TauNormSection
    trains = False
    needs_linear_source = True

    def __init__(self, section: TauNormSection, setup: RefitSetup) -> None:
        super().__init__(section, setup)
        self.weight, self.bias = linear_weights(setup.source_classifier, self.name)

    def classifier_for(self, tau: float) -> nn.Module:
        from ltcl.models import LinearClassifier

        head = LinearClassifier(self.weight.shape[1], self.weight.shape[0]).to(self.weight)
        with torch.no_grad():
            head.weight.copy_(tau_normalized(self.weight, tau))
            head.bias.copy_(self.bias if self.section.bias == "keep" else torch.zeros_like(self.bias))
        return head

    def fit(self, context: Any) -> tuple[nn.Module, dict[str, Any]]:
        from ltcl.decouple.records import write_tau_grid

        s = self.section
        if s.tau >= 0:
            return self.classifier_for(s.tau), {"tau": s.tau, "chosen_on": "given (decouple.tau)"}
        val = context.split("val")
        if val is None:
            raise UserError(
                "tau_norm chooses tau on the validation split and this run has none: add one (--set "
                "data.val_per_class=N on CIFAR and the digits, --set data.val_list=FILE for split lists), or fix tau "
                "with --set decouple.tau=T; it is never chosen on the test set."
            )
        features, labels = context.features(context.loader(val))
        rows, best = [], None
        for tau in s.tau_grid:
            result = context.score(self.classifier_for(tau), features, labels)
            rows.append({"tau": float(tau), **result.as_dict()})
            if best is None or result.all > best[1]:
                best = (float(tau), result.all)
        write_tau_grid(context.run_dir, rows)
        print(f"  tau chosen on the validation split: {best[0]:g} (top-1 {best[1]:.2f} %; grid in tau_grid.csv)")
        return self.classifier_for(best[0]), {"tau": best[0], "chosen_on": "val", "grid": rows}
