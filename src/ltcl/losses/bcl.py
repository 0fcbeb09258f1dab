"""BalancedContrastiveLoss: Balanced Contrastive Learning (Zhu et al., CVPR 2022), with its prototype head.

BCL changes supervised contrastive learning in two ways:

- class-complement: a prototype ``c_j`` of every class takes part in every batch, as one more contrast row (the
  anchor's own prototype is a positive, the others are negatives). The prototypes are not learned on their own:
  :class:`BCLPrototypeHead` maps the classifier's weights through a small MLP, so the classifier and the contrastive
  branch stay tied.
- class-averaging: in the denominator, the terms of each class are averaged over that class's number of terms, so a
  class's total pull on the anchor no longer grows with its share of the batch.

With the contrast rows ``B = {z_k} + {c_j}`` (``y(c_j) = j``), ``s_ik = z_i . x_k / tau``, ``B_j`` the rows of class j
in ``B`` other than the anchor itself, and ``P(i) = B_{y_i}`` (the other rows of its class and its prototype)::

    L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_j 1/|B_j| * sum_{k in B_j} exp(s_ik) )
    L   = mean of L_i over the anchors (the N rows; prototypes are never anchors)

Every anchor has at least its prototype as a positive, so no anchor is left out. The training objective of BCL is
``lambda * LA(logits) + mu * L`` with LA the logit-adjusted cross-entropy (``ltcl.losses.LogitAdjustedLoss``).

Where the public code (FlamieZhu/Balanced-Contrastive-Learning, loss/contrastive.py, ``BalSCL``) and what is done
here differ:

- The code takes exactly two contrastive views per image (``features`` of shape (B, 2, D)); here any number of rows.
  In the code only those two views (views 2 and 3 of three) are anchors and contrast rows; view 1 feeds only the
  cross-entropy (main.py, ``train``, lines 306-310). ltcl's ``bcl`` term does the same by default
  (``loss.bcl.views: split``, :mod:`ltcl.methods.balanced_contrastive`); this module contrasts whatever rows it is
  given.
- ``|B_j|`` counts the class's rows and its prototype, minus the anchor itself for the anchor's own class: the
  code's ``per_ins_weight = batch_cls_count[y_k] - mask``. This is the code's reading of the paper's class-averaged
  denominator, and the one followed.
- Under ``gather_distributed`` the contrast set is the global batch, gathered with gradient; BCL's code runs on one
  process per node with ``DataParallel``, where the loss already sees the whole batch.

Checked against ``BalSCL`` of that repository (commit f72d070) in float64 on the CPU, same inputs: the loss agrees
to 1.8e-15 and the gradients to 4.5e-16 over 20 random batches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.dist import gather_rows, global_mean
from ltcl.losses.validation import (
    anchor_rows,
    check_features,
    check_labels,
    check_temperature,
    compute_dtype,
    zero_with_graph,
)


def balanced_contrastive_per_anchor(
    features: Tensor, labels: Tensor, prototypes: Tensor, *, temperature: float, anchors: slice | None = None
) -> tuple[Tensor, Tensor]:
    """Per-anchor BCL terms ``L_i`` (module docstring); no value checks, no host synchronisation.

    Args:
        features: (N, D) L2-normalised projections; the contrast rows (all ranks' rows under DDP).
        labels: (N,) int64 in [0, C).
        prototypes: (C, D) L2-normalised class prototypes.
        temperature: tau > 0.
        anchors: contiguous rows of ``features`` that are anchors (all when None).

    Returns:
        loss: (A,) ``L_i``; has_positive: (A,) bool, all True (each anchor's prototype is a positive).
    """
    start, stop = anchor_rows(anchors, features.shape[0])
    num_classes = prototypes.shape[0]
    dtype = torch.promote_types(compute_dtype(features), compute_dtype(prototypes))
    with torch.autocast(device_type=features.device.type, enabled=False):
        contrast = torch.cat([features.to(dtype), prototypes.to(dtype)])  # (N + C, D)
        contrast_y = torch.cat([labels, torch.arange(num_classes, device=labels.device)])
        anchor_y = labels[start:stop]
        sim = (contrast[start:stop] / temperature) @ contrast.T  # (A, N + C)
        rows = torch.arange(stop - start, device=sim.device)
        same = anchor_y[:, None] == contrast_y[None, :]

        # Terms of each class in the batch, its prototype included (index_add_, not bincount: no host sync).
        class_terms = torch.ones(num_classes, dtype=dtype, device=sim.device)
        class_terms.index_add_(0, labels, torch.ones_like(labels, dtype=dtype))
        # The anchor itself is not a term of its own class: |B_{y_i}| is one less.
        terms = class_terms[contrast_y][None, :] - same.to(dtype)
        den_logits = sim - terms.log()
        den_logits = den_logits.index_put((rows, rows + start), torch.tensor(-math.inf, dtype=dtype, device=sim.device))
        log_den = torch.logsumexp(den_logits, dim=1)

        positive = same.index_put((rows, rows + start), torch.tensor(False, device=sim.device))
        count = positive.sum(1)
        loss = log_den - (sim * positive).sum(1) / count.clamp(min=1).to(dtype)
    return loss, count > 0


def balanced_contrastive_loss(features: Tensor, labels: Tensor, prototypes: Tensor, *, temperature: float) -> Tensor:
    """BCL loss (module docstring), validating every input (shapes, dtypes, label range, finiteness, temperature).

    Args:
        features: (N, D) L2-normalised projections; labels: (N,) int64 in [0, C);
        prototypes: (C, D) L2-normalised class prototypes; temperature: tau > 0.

    Returns:
        Scalar mean of ``L_i`` over the N anchors (0 with a gradient graph for an empty batch).
    """
    check_features(features)
    check_features(prototypes, "prototypes")
    if prototypes.shape[1] != features.shape[1]:
        raise ValueError(
            f"prototypes have dimension {prototypes.shape[1]} but features have dimension {features.shape[1]}."
        )
    check_labels(labels, features.shape[0], prototypes.shape[0])
    check_temperature(temperature)
    if features.shape[0] == 0:
        return zero_with_graph(features) + zero_with_graph(prototypes)
    loss, has_positive = balanced_contrastive_per_anchor(features, labels, prototypes, temperature=temperature)
    return loss.sum() / has_positive.sum().clamp(min=1)


class BalancedContrastiveLoss(nn.Module):
    """Balanced contrastive loss (class-averaging and class-complement; equations in the module docstring).

    Args:
        num_classes: C, the number of prototypes forward expects.
        temperature: tau > 0 (0.07 in BCL's ImageNet-LT/iNaturalist code).
        gather_distributed: under torch.distributed, contrast against the global batch (gathered with gradient);
            the anchors are this rank's rows, the prototypes are the same on every rank. The value is the
            global-batch loss and its gradient is scaled for DDP's average (``ltcl.dist.global_mean``).

    Inputs of ``forward(features, labels, prototypes)``:
        features: (N, D) float projections, L2-normalised (the loss does not normalise them), all contrastive views
            as rows.
        labels: (N,) int64 class indices in [0, C).
        prototypes: (C, D) float, L2-normalised (what :class:`BCLPrototypeHead` returns).

    Returns a scalar, the mean over the N anchors. Shapes and the labels' dtype are always checked, the label range
    only on the CPU (no host sync on an accelerator; see ``ltcl.losses``).
    """

    def __init__(self, num_classes: int, temperature: float = 0.07, *, gather_distributed: bool = False) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes <= 0:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}.")
        self.num_classes = num_classes
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, temperature={self.temperature}, "
            f"gather_distributed={self.gather_distributed}"
        )

    def forward(self, features: Tensor, labels: Tensor, prototypes: Tensor) -> Tensor:
        if not isinstance(features, Tensor) or features.dim() != 2:
            raise ValueError(f"features must be a 2-D tensor (N, D), got {getattr(features, 'shape', features)}.")
        if not isinstance(prototypes, Tensor) or prototypes.shape != (self.num_classes, features.shape[1]):
            raise ValueError(
                f"prototypes must have shape ({self.num_classes}, {features.shape[1]}), "
                f"got {getattr(prototypes, 'shape', prototypes)}."
            )
        check_labels(labels, features.shape[0], self.num_classes, sync=False)
        anchors = None
        if self.gather_distributed:
            features, labels, anchors = gather_rows(features, labels)
        per_anchor, has_positive = balanced_contrastive_per_anchor(
            features, labels, prototypes, temperature=self.temperature, anchors=anchors
        )
        return global_mean(per_anchor, has_positive)


class BCLPrototypeHead(nn.Module):
    """Maps classifier weights to BCL's class prototypes: Linear, BatchNorm1d, ReLU, Linear, then L2-normalise.

    As in BCL's ``BCLModel.head_fc`` (models/resnext.py), the C classifier weight vectors form the "batch" of the
    MLP (so BatchNorm normalises over classes), and the head has the same shape as the projection head. Gradients
    flow into the classifier's weights: the prototypes are not a separate parameter.

    Args:
        in_dim: F, the classifier's input size (its weight is (C, F); BCL: 2048 for ResNet-50).
        hidden_dim: the hidden width (BCL: F).
        out_dim: D, the projection size (BCL: 1024 on ImageNet-LT).

    Shapes:
        forward(weight (C, F)) -> (C, D) L2-normalised prototypes. C must be at least 2 in training mode
        (BatchNorm needs more than one row).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, weight: Tensor) -> Tensor:
        return F.normalize(self.mlp(weight), dim=1)
