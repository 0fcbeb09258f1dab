"""A classification loss alone, or joined by a contrastive term (Eq. 10): the objective of ``bs``, ``bs+acl``, ...

``loss = cls_weight * classification(all views) + alpha * contrastive(contrastive views)``. The parts are
registered methods of roles ``classification`` and ``contrastive``; their own statistics pass through.

With a mixing strategy (``loss.mixing``, :mod:`ltcl.methods.mixing`) the classification term is computed on mixed
views, ``lam * L(y_a) + (1 - lam) * L(y_b)``: alone, the network runs on the mixed views only (the engine runs no
forward, ``network_views`` 0); with a contrastive term, the contrastive part sees the engine's forward of the
unmixed views and the classification term a second forward of the mixed ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.mixing import Mixing, classify_mixed


class ClassifyAndContrast(Objective):
    """Joins a classification part and, optionally, a contrastive part.

    Args:
        setup: the shared setup (``loss.cls_weight``, ``loss.alpha``).
        parts: the built classification part, then the contrastive part if any.
        mixing: the mixing strategy of the classification term, or None.

    The parts are the submodules ``classification`` and ``contrastive``, which name their state in checkpoints
    (and ``mixing``, whose state is its step counter).
    """

    def __init__(self, setup: ObjectiveSetup, parts: Sequence[Objective], mixing: Mixing | None = None) -> None:
        super().__init__(setup)
        self.classification = parts[0]
        self.contrastive: Objective | None = parts[1] if len(parts) > 1 else None
        self.mixing = mixing
        self.name = "+".join(p.name for p in parts)
        self.cls_weight = float(setup.loss.cls_weight)
        self.alpha = float(setup.loss.alpha)
        own = ("loss_cls", "loss_con") if self.contrastive is not None else ("loss_cls",)
        mixed = mixing.stat_names if mixing is not None else ()
        self.stat_names = own + mixed + tuple(n for p in parts for n in p.stat_names)
        self.needs_projections = any(p.needs_projections for p in parts)  # type: ignore[misc]
        self.needs_features = any(p.needs_features for p in parts)  # type: ignore[misc]
        # With mixing, the classification part runs the network itself: only the contrastive part (if any) needs
        # the engine's forward.
        forwarded = [p for p in parts if mixing is None or p is not self.classification]
        limits = [p.network_views for p in forwarded if p.network_views is not None]
        self.network_views = max(limits) if forwarded and len(limits) == len(forwarded) else None
        if mixing is not None and self.contrastive is None:
            # The network sees only the mixed views, run through the engine's forward (step.run_network), which
            # is DDP's under torchrun and so averages the gradients across processes.
            self.network_views = 0
        second = {p.second_sampler for p in parts} - {None}
        if len(second) > 1:
            raise ValueError(f"The parts of {self.name} ask for two second samplers: {sorted(second)}.")
        self.second_sampler = second.pop() if second else None  # type: ignore[misc]

    def forward(self, step: StepRecord) -> LossOutput:
        views = self.contrastive.classification_views if self.contrastive is not None else None
        if self.mixing is not None:
            cls = classify_mixed(self.mixing, self.classification, step, views)
        else:
            cls = self.classification(step if views is None else step.first_views(views))
        parts: dict[str, Tensor] = {"loss_cls": cls.loss.detach(), **cls.parts}
        total = cls.loss if self.cls_weight == 1.0 else self.cls_weight * cls.loss
        if self.contrastive is None:
            return LossOutput(total, parts, logits=cls.logits)
        con = self.contrastive(step)
        parts |= {"loss_con": con.loss.detach(), **con.parts}
        return LossOutput(total + self.alpha * con.loss, parts, logits=cls.logits)

    def set_epoch(self, epoch: int) -> None:
        for part in self._parts():
            part.set_epoch(epoch)

    def after_step(self, step: StepRecord) -> None:
        for part in self._parts():
            part.after_step(step)
        if self.mixing is not None:
            self.mixing.after_step()

    def bind(self, model) -> None:
        for part in self._parts():
            part.bind(model)

    def sampler_for_epoch(self, epoch: int) -> str | None:
        asked = {p.sampler_for_epoch(epoch) for p in self._parts()} - {None}
        if len(asked) > 1:
            raise ValueError(f"The parts of {self.name} ask for different samplers in epoch {epoch + 1}: {asked}.")
        return asked.pop() if asked else None

    def describe(self) -> str:
        weights = [] if self.cls_weight == 1.0 else [f"classification weight {self.cls_weight}"]
        if self.contrastive is not None:
            weights.append(f"alpha {self.alpha}")
        described = [p.describe() for p in self._parts() if p.describe() != p.name]
        # a lone classification loss that describes itself already starts with the name ("tde (...)", not "tde, tde")
        name = [] if described and described[0].startswith(f"{self.name} (") else [self.name]
        return ", ".join([*name, *weights, *described, *self._describe_mixing()])

    def _describe_mixing(self) -> list[str]:
        if self.mixing is None:
            return []
        views = self.contrastive.classification_views if self.contrastive is not None else None
        count = self.setup.num_views if views is None else min(views, self.setup.num_views)
        seen = "view 1" if count == 1 else f"views 1-{count}"
        if self.contrastive is None:
            where = f"the network runs on the mixed views only ({seen})"
        else:
            where = f"a second forward of the mixed views ({seen}); the contrastive term sees the unmixed views"
        return [f"mixing {self.mixing.describe()} on the classification term: {where}"]

    def _parts(self) -> list[Objective]:
        return [self.classification] + ([self.contrastive] if self.contrastive is not None else [])
