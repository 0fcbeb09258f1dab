"""AlignedContrastiveLoss: Eq. 9 with EMA class centres, inverse-frequency negative weights and optional DDP gather."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.dist import gather_rows, global_mean
from ltcl.losses import functional as LF
from ltcl.losses.aligned_function import aligned_contrastive_terms
from ltcl.losses.validation import check_labels

# How a negative of class j is weighted: inverse_frequency, w_j of :func:`inverse_frequency_weights`; none, 1.
NEGATIVE_WEIGHTINGS = ("inverse_frequency", "none")


def inverse_frequency_weights(class_counts: Sequence[int] | Tensor) -> Tensor:
    """(C,) float32 ``w_j = (sum_k N_k / C) / N_j``: inversely proportional to the class frequency and averaging
    to 1 over the training images. The paper says only "inversely proportional to the class frequency"; this
    constant keeps the weighted negatives on the scale of unweighted ones."""
    counts = LF.check_class_counts(class_counts)
    return ((counts.sum() / counts.numel()) / counts).to(torch.float32)


class AlignedContrastiveLoss(nn.Module):
    """Aligned contrastive loss (Eq. 9) with its class centres and negative weights.

    Each positive gets a denominator that holds only itself and the weighted negatives, so every positive is
    attracted (Eq. 11). The anchor's class centre is one more positive; the other centres are negatives.

    Centres live in the ``centers`` buffer and travel with ``state_dict``. A centre that was
    never set is initialised from the mean of its class in the first batch that holds the class, before that batch's
    loss is computed. After each training-mode forward every class present in the (global) batch is updated,
    ``c_j <- normalize(m * c_j + (1 - m) * mean_j)`` with the detached features; absent classes keep their centre.
    Centres not yet set take no part in the loss.

    Args:
        class_counts: (C,) training images per class (all positive).
        feature_dim: D, the projection size.
        temperature: tau > 0 (0.05 in the paper's CIFAR recipe, 0.2 on ImageNet-LT).
        center_momentum: m in [0, 1); the paper does not give it, 0.9 is our default.
        use_centers: add the class centres as positives and negatives.
        negative_weighting: "inverse_frequency" (``w_j`` above) or "none" (all ones).
        gather_distributed: under torch.distributed, contrast against the global batch: features and labels of all
            ranks are gathered with gradient, each rank's anchors are its own rows, and centres stay identical on
            all ranks. The returned value is the global-batch loss; its gradient is scaled so that DDP's average
            over ranks gives the parameters exactly the global-batch gradient (see ``gather.global_mean``).

    Inputs of ``forward(features, labels)``:
        features: (N, feature_dim) float projections, L2-normalised (the loss does not normalise them; the centres
            are kept at unit length to match), all views as rows.
        labels: (N,) int64 class indices in [0, C); they index the centres and the negative weights.

    Returns a scalar, the mean over anchors with a positive term. Shapes and the labels' dtype are always checked,
    the label range only on the CPU (no host sync on an accelerator; see ``ltcl.losses``).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        feature_dim: int,
        *,
        temperature: float = 0.05,
        center_momentum: float = 0.9,
        use_centers: bool = True,
        negative_weighting: str = "inverse_frequency",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        counts = LF.check_class_counts(class_counts)
        if not isinstance(feature_dim, int) or feature_dim <= 0:
            raise ValueError(f"feature_dim must be a positive integer, got {feature_dim!r}.")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}.")
        if not (isinstance(center_momentum, (int, float)) and 0 <= center_momentum < 1):
            raise ValueError(f"center_momentum must be in [0, 1), got {center_momentum!r}.")
        if negative_weighting not in NEGATIVE_WEIGHTINGS:
            raise ValueError(
                f"negative_weighting must be one of {', '.join(NEGATIVE_WEIGHTINGS)}, got {negative_weighting!r}."
            )
        self.num_classes = counts.numel()
        self.feature_dim = feature_dim
        self.temperature = float(temperature)
        self.center_momentum = float(center_momentum)
        self.use_centers = bool(use_centers)
        self.negative_weighting = negative_weighting
        self.gather_distributed = bool(gather_distributed)
        weights = inverse_frequency_weights(counts) if negative_weighting == "inverse_frequency" else None
        self.register_buffer("negative_weights", weights if weights is not None else torch.ones(self.num_classes))
        self.register_buffer("centers", torch.zeros(self.num_classes, feature_dim))
        self.register_buffer("centers_initialized", torch.zeros(self.num_classes, dtype=torch.bool))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, temperature={self.temperature}, "
            f"center_momentum={self.center_momentum}, use_centers={self.use_centers}, "
            f"negative_weighting={self.negative_weighting!r}, gather_distributed={self.gather_distributed}"
        )

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[1] != self.feature_dim:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"features must have shape (N, {self.feature_dim}), got {shape}.")
        check_labels(labels, features.shape[0], self.num_classes, sync=False)
        if self.gather_distributed:
            features, labels, anchors = gather_rows(features, labels)
        else:
            anchors = slice(0, features.shape[0])
        weights = self.negative_weights if self.negative_weighting != "none" else None
        centers = None
        if self.use_centers:
            class_mean, present = self._class_means(features.detach(), labels)
            centers, known = self._centers_for_batch(class_mean, present)
            # Unset centres of classes absent from the batch must not act as negatives: weight 0 removes them.
            weights = (self.negative_weights if weights is None else weights) * known.to(self.negative_weights.dtype)
        per_anchor, has_positive = aligned_contrastive_terms(
            features, labels, self.temperature, centers, weights, anchors
        )
        loss = global_mean(per_anchor, has_positive)
        if self.use_centers and self.training:
            self._update_centers(centers, class_mean, present)
        return loss

    def _class_means(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(C, D) float32 mean of each class's features in the batch (0 if absent) and (C,) bool presence."""
        sums = torch.zeros(self.num_classes, features.shape[1], device=features.device, dtype=torch.float32)
        sums.index_add_(0, labels, features.float())
        # index_add_ rather than bincount, which waits for the host on CUDA to size its output
        counts = torch.zeros(self.num_classes, device=features.device, dtype=sums.dtype)
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=sums.dtype))
        return sums / counts.clamp(min=1)[:, None], counts > 0

    @torch.no_grad()
    def _centers_for_batch(self, class_mean: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """Centres used by this batch's loss: stored ones, plus the batch mean for classes seen the first time.

        Returns the (C, D) centres and the (C,) bool mask of classes whose centre is set.
        """
        first_time = present & ~self.centers_initialized
        centers = torch.where(first_time[:, None], F.normalize(class_mean, dim=1), self.centers)
        return centers, self.centers_initialized | present

    @torch.no_grad()
    def _update_centers(self, centers: Tensor, class_mean: Tensor, present: Tensor) -> None:
        """EMA step for the classes in the batch, then back to unit length; absent classes keep their centre."""
        m = self.center_momentum
        moved = F.normalize(m * centers + (1.0 - m) * class_mean, dim=1)
        self.centers.copy_(torch.where(present[:, None], moved, self.centers))
        self.centers_initialized |= present
