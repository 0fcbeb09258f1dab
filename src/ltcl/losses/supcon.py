"""SupConLoss: the supervised contrastive baseline (Eq. 1) with optional DDP gather."""

from __future__ import annotations

from torch import Tensor, nn

from ltcl.dist import gather_rows, global_mean
from ltcl.losses import functional as LF
from ltcl.losses.validation import check_labels


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Eq. 1, Khosla et al.), the SCL of the paper's ablations.

    Anchors are all rows; the positives of row i are the other rows with its label (other views of the same image
    included); the denominator sums over every other row. Anchors without positives are left out of the mean,
    never turned into NaN.

    Args:
        temperature: tau > 0.
        gather_distributed: contrast against the global batch under torch.distributed (see AlignedContrastiveLoss).

    Inputs of ``forward(features, labels)``:
        features: (N, D) float projections, L2-normalised (the loss does not normalise them), all views as rows.
        labels: (N,) int64 class indices, >= 0 (only compared with each other: SCL has no number of classes).

    Returns a scalar, the mean over anchors with a positive. Shapes and the labels' dtype are always checked,
    negative labels only on the CPU (no host sync on an accelerator; see ``ltcl.losses``).
    """

    def __init__(self, temperature: float = 0.05, *, gather_distributed: bool = False) -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}.")
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        if not isinstance(features, Tensor) or features.dim() != 2:
            raise ValueError(f"features must be a 2-D tensor (N, D), got {getattr(features, 'shape', features)}.")
        check_labels(labels, features.shape[0], None, sync=False)
        anchors = slice(0, features.shape[0])
        if self.gather_distributed:
            features, labels, anchors = gather_rows(features, labels)
        per_anchor, has_positive = LF.supervised_contrastive_terms(
            features, labels, self.temperature, (anchors.start, anchors.stop)
        )
        return global_mean(per_anchor, has_positive)
