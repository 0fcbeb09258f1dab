"""``ncm``: nearest class mean (Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
ICLR 2020, Sec. 4): every image is given the class whose mean training feature is nearest; nothing trains.

As the authors' code does by default (facebookresearch/classifier-balancing, ``main.py --knn`` with ``--feat_type
cl2n --dist_type l2``, ``run_networks.get_knncentroids`` and ``models/KNNClassifier.py``): the training images are
forwarded once with the evaluation transform and the backbone in evaluation mode; each feature is centred by the
mean training feature and L2-normalised (``cl2n``), the class means are the means of those vectors, and a test
feature, centred and normalised the same way, scores ``-||x - m_j||^2``. ``features: l2n`` skips the centring;
``distance: cosine`` normalises the means too, so that the ranking is the cosine to the class means (the paper's
other option; the authors' ``cos`` is a dot product with the unnormalised means divided by the feature size,
which ltcl does not offer). The result is the ``ncm`` classifier (:class:`ltcl.models.NearestClassMeanClassifier`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.decouple.base import Refitter, register_refitter
from ltcl.models import NearestClassMeanClassifier


@dataclass
class NCMSection:
    """``decouple.*`` for ncm; defaults from the authors' ``main.py`` (``--feat_type cl2n --dist_type l2``)."""

    features: Literal["cl2n", "l2n"] = "cl2n"  # centred by the mean training feature, then L2-normalised
    distance: Literal["l2", "cosine"] = "l2"  # squared distance to the means; cosine: to the normalised means


def class_means(features: Tensor, labels: Tensor, num_classes: int, centred: bool) -> tuple[Tensor, Tensor]:
    """(C, F) means of the transformed training features per class and the (F,) centre subtracted first."""
    center = features.mean(0) if centred else torch.zeros_like(features[0])
    x = F.normalize(features - center, dim=1)
    sums = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=num_classes).to(x.dtype).clamp_min(1)
    return sums / counts[:, None], center


@register_refitter
class NearestClassMean(Refitter):
    """The nearest class mean of the frozen backbone's training features."""

    name = "ncm"
    paper = "Kang et al., Decoupling (NCM), ICLR 2020"
    code = "facebookresearch/classifier-balancing: run_networks.py get_knncentroids, models/KNNClassifier.py"
    Section = NCMSection
    classifier = "ncm"
    trains = False

    def fit(self, context: Any) -> tuple[nn.Module, dict[str, Any]]:
        features, labels = context.features(context.loader(context.train_plain()))
        features = features.double()  # the means of many features, summed in float64
        means, center = class_means(features, labels, self.setup.num_classes, self.section.features == "cl2n")
        if self.section.distance == "cosine":
            means = F.normalize(means, dim=1)
        head = NearestClassMeanClassifier(self.setup.feature_dim, self.setup.num_classes).to(context.device)
        head.weight.copy_(means.float())
        head.center.copy_(center.float())
        return head, {"training_images": int(labels.numel())}
