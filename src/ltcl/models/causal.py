"""``model.classifier: causal``: the causal model's multi-head normalised classifier with its moving-average
feature and the counterfactual (TDE) rule at evaluation (Tang et al., NeurIPS 2020; equations in
:mod:`ltcl.losses.tde`).

In training mode the classifier gives the de-confounded logits (Eq. 5) and adds the mean feature of the batch to
its moving average (``direction``, a buffer); in evaluation mode it gives the TDE logits (Eq. 9), subtracting
alpha times each head's projection on the moving-average direction. Its hyperparameters are buffers too, so a
checkpoint predicts with TDE and the values it was trained with in ``ltcl eval``, ``ltcl predict`` and a user's
code. The ``tde`` method (``loss.tde``) sets them from its section; built alone (``model.classifier: causal``
with another method) it keeps the authors' ImageNet-LT values below.

Where ltcl differs from the authors' code (KaihuaTang/Long-Tailed-Recognition.pytorch, classification/models/
CausalNormClassifier.py, run_networks.py): the moving average lives in the classifier (the authors keep it in the
training script as a numpy array and save it beside the weights), it is updated inside the classifier's training
forward (once per view-size group when several views of different sizes are trained, once per step with one
view, as the authors), under ``torch.distributed`` with the mean over the global batch (the authors' DataParallel
also averages the whole batch), and zero-length heads stay zero instead of NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ltcl.dist import all_reduce_sum
from ltcl.errors import UserError
from ltcl.losses.tde import causal_norm_logits, moving_average_update, tde_logits
from ltcl.models.heads import ClassifierKind, EvalBias, register_classifier

# The authors' defaults: CausalNormClassifier.py line 9 and config/ImageNet_LT/causal_norm.yaml line 19 (two heads,
# tau 16, gamma 1/32, alpha 3); run_networks.py line 46 (momentum 0.9).
DEFAULTS = {"num_heads": 2, "tau": 16.0, "gamma": 0.03125, "alpha": 3.0, "momentum": 0.9}


class CausalNormClassifier(EvalBias, nn.Module):
    """Multi-head normalised classifier: (B, F) features -> (B, C) logits; TDE logits in evaluation mode.

    Args:
        in_dim: F, divisible by ``num_heads``.
        num_classes: C.
        num_heads: K, the heads the features and weights are cut into.
        tau: logit scale (each head contributes ``tau / K`` times a cosine-like term).
        gamma: added to each weight head's length (``w / (||w|| + gamma)``).
        alpha: strength of the counterfactual subtraction at evaluation (0: the training logits).
        momentum: mu of the moving average ``c <- mu c + mean(x)``.

    Attributes:
        weight: (C, F) class weights (uniform in +-1/sqrt(F), as the authors initialise them).
        direction: (F,) the moving average of the training features.
        eval_bias: (C,) added in evaluation mode (zeros: TDE alone).
    """

    def __init__(self, in_dim: int, num_classes: int, **values: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)  # CausalNormClassifier.py lines 21-23
        self.register_buffer("direction", torch.zeros(in_dim))
        self.register_buffer("num_heads", torch.tensor(0, dtype=torch.int64))
        for name in ("tau", "gamma", "alpha", "momentum"):  # float64: 0.9 stays 0.9 (0-dim: no type promotion)
            self.register_buffer(name, torch.tensor(0.0, dtype=torch.float64))
        self.heads = 0
        self._add_eval_bias(num_classes)
        self.configure(**{**DEFAULTS, **values})

    def configure(self, num_heads: int, tau: float, gamma: float, alpha: float, momentum: float) -> None:
        """Sets the hyperparameters (they travel with the state dict)."""
        f = self.weight.shape[1]
        if not isinstance(num_heads, int) or num_heads < 1 or f % num_heads:
            raise UserError(f"The causal classifier's {f} features cannot be cut into {num_heads} heads of equal "
                            "size (loss.tde.num_heads must divide the backbone's feature size).")  # fmt: skip
        if not (tau > 0 and gamma >= 0 and alpha >= 0 and 0 <= momentum <= 1):
            raise UserError(f"The causal classifier needs tau > 0, gamma >= 0, alpha >= 0 and momentum in [0, 1], "
                            f"got tau {tau}, gamma {gamma}, alpha {alpha}, momentum {momentum}.")  # fmt: skip
        self.heads = num_heads
        self.num_heads.fill_(num_heads)
        self.tau.fill_(tau)
        self.gamma.fill_(gamma)
        self.alpha.fill_(alpha)
        self.momentum.fill_(momentum)

    @torch.no_grad()
    def _accumulate(self, features: Tensor) -> None:
        rows = features.detach().to(self.direction.dtype)  # float32 (float64 in a float64 model)
        totals = torch.cat([rows.sum(0), rows.new_full((1,), rows.shape[0])])  # a fill: no copy from the host
        all_reduce_sum(totals)  # the global batch under torch.distributed, identical on every process
        mean = totals[:-1] / totals[-1].clamp(min=1)
        self.direction.copy_(moving_average_update(self.direction, mean, self.momentum))

    def forward(self, features: Tensor) -> Tensor:
        if self.training:
            self._accumulate(features)
            return causal_norm_logits(features, self.weight, self.heads, self.tau, self.gamma)
        logits = tde_logits(features, self.weight, self.direction, self.heads, self.tau, self.gamma, self.alpha)
        return self._at_eval(logits)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.heads = int(self.num_heads)

    def extra_repr(self) -> str:
        return (f"in_dim={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, num_heads={self.heads}, "
                f"tau={float(self.tau)}, gamma={float(self.gamma)}, alpha={float(self.alpha)}, "
                f"momentum={float(self.momentum)}")  # fmt: skip


register_classifier(
    ClassifierKind(
        "causal",
        lambda f, c, cfg: CausalNormClassifier(f, c),
        "Tang et al., NeurIPS 2020 (multi-head normalised, moving-average feature, TDE at evaluation; loss.tde)",
    )
)
