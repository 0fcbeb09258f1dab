"""``tde``: the causal model of Tang et al. (NeurIPS 2020): de-confounded training of a multi-head normalised
classifier, and its Total Direct Effect (TDE) at test.

The method is softmax cross-entropy on the logits of ``model.classifier: causal``
(:class:`~ltcl.models.causal.CausalNormClassifier`), as the authors train it (classification/loss/SoftmaxLoss.py);
everything else lives in that classifier: its training logits (Eq. 5), the moving average of the training
features it keeps as a buffer, and the counterfactual subtraction it applies in evaluation mode (Eq. 9), so that
``ltcl eval``, ``ltcl predict`` and every checkpoint give TDE predictions. ``bind`` writes this section's values into
the classifier (they are saved with it); ``set_epoch`` sets the epoch's momentum of the moving average.

Statistics: ``tde_momentum`` (the epoch's mu) and ``tde_cos`` (mean cosine between the heads of the step's
features and of the moving-average direction: the authors' README picks alpha so that ``alpha * cos`` is about 1).

Where ltcl differs from the authors' code (KaihuaTang/Long-Tailed-Recognition.pytorch, classification/): the
moving average is updated inside the classifier (once per view-size group; the rival configs train one view, as
the authors), with the global batch under ``torch.distributed``; the learning rate that scales the momentum on
datasets other than CIFAR (run_networks.py lines 305-309) is ltcl's schedule at the epoch's start, where the
authors read their per-epoch scheduler after its step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ltcl.config import ConfigError
from ltcl.config.checks import AT_LEAST_1, MOMENTUM, NON_NEGATIVE, POSITIVE
from ltcl.losses.tde import epoch_momentum, head_cosines
from ltcl.losses.validation import compute_dtype
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective
from ltcl.models.causal import CausalNormClassifier
from ltcl.schedule import learning_rate


@dataclass
class TDESection:
    """``loss.tde``; defaults: the authors' ImageNet-LT config (KaihuaTang/Long-Tailed-Recognition.pytorch,
    classification/config/ImageNet_LT/causal_norm.yaml line 19, and run_networks.py)."""

    num_heads: int = field(default=2, metadata=AT_LEAST_1)  # K; causal_norm.yaml line 19 (every config)
    tau: float = field(default=16.0, metadata=POSITIVE)  # logit scale; causal_norm.yaml line 19
    gamma: float = field(default=0.03125, metadata=NON_NEGATIVE)  # 1/32 in w / (||w|| + gamma); line 19
    # TDE strength at test; line 19 (CIFAR-10-LT 1.0, CIFAR-100-LT 1.5: their causal_norm_32.yaml lines 19)
    alpha: float = field(default=3.0, metadata=NON_NEGATIVE)
    momentum: float = field(default=0.9, metadata=MOMENTUM)  # mu of c <- mu c + mean(x); run_networks.py line 46
    # mu of an epoch = 1 - (1 - momentum) min(lr * scale, 1) (run_networks.py lines 305-309, every dataset but
    # CIFAR); 0 keeps the momentum fixed (the authors' CIFAR runs)
    momentum_lr_scale: float = field(default=50.0, metadata=NON_NEGATIVE)


@register_objective
class TotalDirectEffect(Objective):
    """Cross-entropy on the causal classifier's logits; TDE at test lives in the classifier (module docstring)."""

    name = "tde"
    role = "classification"
    paper = "Tang et al., causal model with TDE, NeurIPS 2020"
    Section = TDESection
    needs_features = True  # for the tde_cos statistic

    @classmethod
    def adapt_config(cls, cfg):
        """The plain linear classifier becomes the causal one (any other classifier is refused below)."""
        if cfg.model.classifier == "linear":
            return replace(cfg, model=replace(cfg.model, classifier="causal"))
        return cfg

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.model.classifier != "causal":
            raise ConfigError(
                "loss.objective tde trains the causal model's classifier and predicts with its counterfactual: set "
                f"model.classifier=causal, got {cfg.model.classifier}."
            )

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        self._classifier: tuple[CausalNormClassifier, ...] = ()  # a tuple: not a submodule of the objective
        self._momentum: torch.Tensor | None = None
        self.stat_names = ("tde_momentum", "tde_cos")

    @property
    def classifier(self) -> CausalNormClassifier:
        if not self._classifier:
            raise RuntimeError("tde is not bound to a network yet (the engine calls bind(model) first).")
        return self._classifier[0]

    def bind(self, model: nn.Module) -> None:
        head = getattr(model, "classifier", None)
        if not isinstance(head, CausalNormClassifier):
            raise ConfigError(f"loss.objective tde needs model.classifier=causal, got {type(head).__name__}.")
        s = self.section
        head.configure(s.num_heads, s.tau, s.gamma, s.alpha, s.momentum)
        self._classifier = (head,)

    def set_epoch(self, epoch: int) -> None:
        s = self.section
        mu = epoch_momentum(s.momentum, learning_rate(self.setup.optim, epoch, 1), s.momentum_lr_scale)
        self.classifier.momentum.fill_(mu)
        self._momentum = None

    def forward(self, step: StepRecord) -> LossOutput:
        loss = F.cross_entropy(step.logits.to(compute_dtype(step.logits)), step.labels)  # float32 under autocast
        head = self.classifier
        with torch.no_grad():
            cos = head_cosines(step.features.detach().to(head.direction.dtype), head.direction, head.heads).mean()
            if self._momentum is None or self._momentum.device != cos.device:
                self._momentum = head.momentum.detach().clone()
        return LossOutput(loss, {"tde_momentum": self._momentum, "tde_cos": cos})

    def describe(self) -> str:
        s = self.section
        mu = f"1 - {1 - s.momentum:g} min({s.momentum_lr_scale:g} lr, 1)" if s.momentum_lr_scale else f"{s.momentum:g}"
        return (
            f"tde (cross-entropy on the causal classifier: {s.num_heads} heads, tau {s.tau:g}, gamma {s.gamma:g}; "
            f"moving-average momentum {mu}; TDE at test with alpha {s.alpha:g})"
        )
