"""GPaCoLoss: Generalized Parametric Contrastive Learning (Cui et al., TPAMI 2023), the paper's strongest rival.

The "parametric class centres" of PaCo/GPaCo are the rows of the linear classifier: the centre term of anchor i for
class j is its classifier logit, shifted by the log prior as in Balanced Softmax. The C centre logits are placed in
front of the sample similarities, and one softmax over all of them both classifies and contrasts, so this loss is
the whole training objective (no separate cross-entropy).

The contrast rows are the batch (both views of every image; every batch row is an anchor) followed by a queue of K
keys of past batches with their labels (:class:`GPaCoQueue`; the queue rows are never anchors and carry no
gradient). With ``a_ij = l_ij + log pi_j`` (logits ``l``, training prior ``pi_j = N_j / sum_k N_k``),
``s_ik = z_i . z_k / tau`` over the batch rows and the queue keys, and ``P(i)`` the other batch rows and the queue
keys with label ``y_i``::

    D_i = sum_j exp(a_ij) + gamma * sum_{k != i} exp(s_ik)                  (k over the batch and the queue)
    c_ij = (1 - eps) [j = y_i] + eps / (C - 1) [j != y_i]                   (label smoothing eps, 0 by default)
    L_i = -( beta * sum_j c_ij log(exp(a_ij) / D_i) + alpha * sum_{p in P(i)} log(exp(s_ip) / D_i) )
          / (beta + alpha |P(i)|)
    L   = mean of L_i over the anchors (every anchor when beta > 0)

Where the public code (dvlab-research/Parametric-Contrastive-Learning, GPaCo/LT/losses.py ``PaCoLoss`` and
GPaCo/LT/moco/builder.py ``MoCo``) and the papers differ, and what is followed here:

- Weights. The PaCo paper weights each sample positive by alpha and the centre by 1; the code adds beta (centre)
  and gamma (sample terms of the denominator), which the authors say are 1.0 in all their experiments, alpha being
  the only meaningful one (repository issue #12). Code followed; beta = gamma = 1 gives the paper's loss.
- Normalisation. The code divides the weighted sum by the sum of the weights, ``beta + alpha |P(i)|``
  (``mask.sum(1)``), the ``1 + alpha K_y`` of the paper's Remark 2 (issue #23). Followed. The queue's positives
  count in ``|P(i)|``: with a queue the own-centre weight ``beta / (beta + alpha |P(i)|)`` of a frequent class is
  much smaller than with the batch alone, which is why the queue is kept.
- Centre rebalance. The log prior on the centre logits is in the code (``cal_weight_for_classes``), not in PaCo's
  loss equation; the authors point to logit adjustment / Balanced Softmax for it (issue #26). Followed. Their
  full-ImageNet trainer (paco_imagenet.py) never calls it, so it has no prior; here the prior is always added (on a
  balanced set it is log(1/C) on every centre, which lowers the centres against the samples).
- Queue. GPaCo is PaCo without the momentum encoder (issue #18): both views go through the same encoder and both
  are anchors; the builder keeps a MoCo queue of K keys (the second view's normalised projections, detached) with
  their labels, as extra contrast rows that are never anchors. Each step contrasts against the queue as it was
  before the step, then enqueues the global batch's keys (``_dequeue_and_enqueue`` after ``concat_all_gather``).
  Followed (the method enqueues after the optimiser step the keys it computed in the forward pass: the same keys).
  The builder starts the queue with random keys and random labels (``randn(K, dim)`` normalised along dim 0, i.e.
  per column, so its rows are not unit vectors; labels uniform in [0, C)); that is the default here, with a masked
  empty start (``queue_start="empty"``) as an option. The builder asserts K % global batch == 0; here any K works
  (the pointer wraps, and a batch larger than K keeps its last K keys).
- Distributed. The authors' loss contrasts each GPU's own batch with the (global) queue; here, with
  ``gather_distributed``, the batch rows of every process are gathered with their gradient, so the loss equals the
  one-process loss on the global batch (with 4 GPUs of 32 images the authors' anchors see 64 batch rows, ltcl's 256).
- ``temperature / base_temperature`` rescaling: ``base_temperature`` defaults to ``temperature`` and no script
  passes another, so the factor is 1 and is left out. ``supt``, which divides the centre logits, is 1.0 and no
  script passes another: left out too.
- ``log(pi_j + 1e-9)`` and ``log(sum + 1e-12)`` in the code; the exact ``log pi_j`` and log-sum-exp here (counts are
  validated positive). The code's weight masks are float32 whatever the inputs' precision (alpha and beta rounded
  to float32, ``mask.sum(1)`` a float32 sum); here the weights have the compute precision. Together these make the
  two differ by about 1e-6 in the loss; without them they agree to float64 rounding.
- Label smoothing of the centre positive (``smooth``): 0 in ``PaCoLoss`` and in the long-tailed scripts; the full
  ImageNet script (GPaCo/LT/sh/ImageNet/train_resnet50.sh, ``--smooth 0.1``, also the default of paco_imagenet.py)
  sets 0.1. Implemented as in the code: the beta of the centre is spread as ``1 - eps`` on the own class and
  ``eps / (C - 1)`` on each other class (the weights still sum to beta).
- An anchor whose positive weights sum to 0 (beta = 0 and no sample positive) gives 0/0 = NaN in the code; here it
  is left out of the mean.

The queue is in :mod:`ltcl.losses.gpaco_queue`, the per-anchor maths in :mod:`ltcl.losses.gpaco_terms`, the
projection head in :mod:`ltcl.losses.gpaco_head`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ltcl.dist import gather_rows, global_mean
from ltcl.losses.gpaco_queue import GPaCoQueue, QueueStart, _check_queue
from ltcl.losses.gpaco_terms import GPaCoWeights, _check_weights, gpaco_per_anchor
from ltcl.losses.validation import check_class_counts, check_features, check_labels, check_logits, zero_with_graph


def gpaco_loss(
    features: Tensor,
    labels: Tensor,
    logits: Tensor,
    class_counts: Sequence[int] | Tensor,
    weights: GPaCoWeights = GPaCoWeights(),  # noqa: B008  (a frozen dataclass)
    queue: Tensor | None = None,
    queue_labels: Tensor | None = None,
) -> Tensor:
    """GPaCo loss (module docstring), validating every input (shapes, dtypes, label range, finiteness, weights).

    Args:
        features: (N, D) L2-normalised projections, one row per view.
        labels: (N,) int64 in [0, C).
        logits: (N, C) classifier logits of the same rows.
        class_counts: (C,) positive training counts ``N_j`` (the log prior of the centre logits).
        weights: alpha, beta, gamma, temperature and smoothing (:class:`GPaCoWeights`).
        queue: (K, D) keys of past batches (extra contrast rows, never anchors), or None.
        queue_labels: (K,) int64 labels of the keys in [0, C), or -1 for an empty slot.

    Returns:
        Scalar mean of ``L_i`` over anchors with a positive term; a zero with a gradient graph when there is none.
    """
    counts = check_class_counts(class_counts)
    _check_weights(weights.alpha, weights.beta, weights.gamma, weights.temperature, weights.smooth)
    check_features(features)
    check_logits(logits, labels, counts.numel())
    if logits.shape[0] != features.shape[0]:
        raise ValueError(f"logits have {logits.shape[0]} rows but features have {features.shape[0]}.")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or inf values.")
    if weights.smooth > 0 and counts.numel() < 2:
        raise ValueError("smooth > 0 spreads the centre weight over the other classes: it needs at least 2 classes.")
    _check_queue(queue, queue_labels, features.shape[1], counts.numel())
    if features.shape[0] == 0:
        return zero_with_graph(features) + zero_with_graph(logits)
    log_prior = (counts / counts.sum()).log()
    terms = gpaco_per_anchor(features, labels, logits, log_prior, weights, queue=queue, queue_labels=queue_labels)
    return terms.loss.sum() / terms.has_positive.sum().clamp(min=1)


class GPaCoLoss(nn.Module):
    """Generalized Parametric Contrastive loss with its queue (equations and code differences in the module
    docstring).

    Args:
        class_counts: (C,) training images per class; their log prior shifts the centre logits.
        alpha: weight of the sample positives (0.01 in the authors' CIFAR scripts, 0.05 for ImageNet-LT X50).
        beta: weight of the own-class centre positive (1.0 in every script).
        gamma: weight of the sample terms in the denominator (1.0 in every script).
        temperature: tau of the sample similarities (0.05 on CIFAR-LT, 0.2 on ImageNet-LT).
        smooth: label smoothing of the centre positive (0.1 in the full-ImageNet script, 0 elsewhere).
        queue_size: K, keys of past batches kept as extra contrast rows (0: no queue, the batch alone).
        key_dim: D, the keys' length (needed when ``queue_size`` > 0).
        queue_start: ``random`` (the authors': random keys, random labels) or ``empty`` (masked until filled).
        seed: seed of the random start.
        gather_distributed: under torch.distributed, contrast against the global batch (gathered with gradient)
            and the queue, and enqueue the global batch; the anchors, and the ``logits`` passed in, are this rank's
            rows. The value is the global-batch loss and its gradient is scaled for DDP's average
            (``ltcl.dist.global_mean``).

    Inputs of ``forward(features, labels, logits)``:
        features: (N, D) float projections, L2-normalised (the loss does not normalise them), all views as rows.
        labels: (N,) int64 class indices in [0, C).
        logits: (N, C) float raw classifier logits of the same rows (the loss adds the log prior).

    Returns a scalar, the mean over anchors with a positive term; ``last_centre_weight`` then holds the mean
    own-centre weight ``beta / (beta + alpha |P(i)|)`` of this rank's anchors (detached). ``enqueue(keys, labels)``
    pushes keys afterwards (no gradient). Shapes and the labels' dtype are always checked, the label range only on
    the CPU (no host sync on an accelerator; see ``ltcl.losses``).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        *,
        alpha: float = 0.01,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 0.05,
        smooth: float = 0.0,
        queue_size: int = 0,
        key_dim: int = 0,
        queue_start: QueueStart = "random",
        seed: int = 0,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        counts = check_class_counts(class_counts)
        _check_weights(alpha, beta, gamma, temperature, smooth)
        if smooth > 0 and counts.numel() < 2:
            raise ValueError("smooth > 0 spreads the centre weight over the other classes: it needs 2 classes.")
        if not (isinstance(queue_size, int) and queue_size >= 0):
            raise ValueError(f"queue_size must be an integer >= 0, got {queue_size!r}.")
        self.num_classes = counts.numel()
        self.weights = GPaCoWeights(float(alpha), float(beta), float(gamma), float(temperature), float(smooth))
        self.gather_distributed = bool(gather_distributed)
        # float64: exact for float64 inputs; cast per forward to the compute dtype (C numbers).
        self.register_buffer("log_prior", (counts / counts.sum()).log())
        self.queue = None
        if queue_size > 0:
            self.queue = GPaCoQueue(
                queue_size,
                key_dim,
                self.num_classes,
                start=queue_start,
                seed=seed,
                gather_distributed=gather_distributed,
            )
        self.last_centre_weight: Tensor | None = None

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, {self.weights}, gather_distributed={self.gather_distributed}"

    def forward(self, features: Tensor, labels: Tensor, logits: Tensor) -> Tensor:
        if not isinstance(features, Tensor) or features.dim() != 2:
            raise ValueError(f"features must be a 2-D tensor (N, D), got {getattr(features, 'shape', features)}.")
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (N, {self.num_classes}), got {getattr(logits, 'shape', logits)}.")
        if logits.shape[0] != features.shape[0]:
            raise ValueError(f"logits have {logits.shape[0]} rows but features have {features.shape[0]}.")
        if self.queue is not None and features.shape[1] != self.queue.keys.shape[1]:
            raise ValueError(f"features have length {features.shape[1]} but the queue keys {self.queue.keys.shape[1]}.")
        check_labels(labels, features.shape[0], self.num_classes, sync=False)
        anchors = None
        if self.gather_distributed:
            features, labels, anchors = gather_rows(features, labels)
        queue = (self.queue.keys, self.queue.labels) if self.queue is not None else (None, None)
        terms = gpaco_per_anchor(features, labels, logits, self.log_prior, self.weights, anchors, *queue)
        self.last_centre_weight = (terms.centre_weight.sum() / terms.has_positive.sum().clamp(min=1)).detach()
        return global_mean(terms.loss, terms.has_positive)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor) -> None:
        """Pushes (n, D) detached keys and their (n,) labels into the queue (the global batch's under
        ``gather_distributed``); nothing without a queue."""
        if self.queue is not None:
            self.queue.push(keys, labels)
