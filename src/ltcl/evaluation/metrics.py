"""Numbers of one split's logits: the confusion matrix, per-class accuracy / precision / recall, top-k, NLL.

Every function takes the logits and labels of the whole split (gathered over processes, :mod:`.gather`) and
computes in float64 where it sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def confusion_matrix(labels: Tensor, predicted: Tensor, num_classes: int) -> Tensor:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    labels, predicted = torch.as_tensor(labels).long().cpu(), torch.as_tensor(predicted).long().cpu()
    flat = torch.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.view(num_classes, num_classes)


def _ratio(numerator: int, denominator: int) -> float | None:
    return 100.0 * numerator / denominator if denominator else None


@dataclass
class ClassMetrics:
    """Per-class counts and percentages from a confusion matrix; None where the denominator is 0.

    Attributes:
        support: images of the class in the split (row sums); predicted: images predicted as the class (column
            sums); correct: the diagonal.
        accuracy: correct / support in % (the class's top-1 accuracy), which is its recall.
        precision: correct / predicted in %.
    """

    support: list[int]
    predicted: list[int]
    correct: list[int]
    accuracy: list[float | None]
    precision: list[float | None]

    @property
    def recall(self) -> list[float | None]:
        return self.accuracy


def class_metrics(confusion: Tensor) -> ClassMetrics:
    support, predicted = confusion.sum(1).tolist(), confusion.sum(0).tolist()
    correct = confusion.diagonal().tolist()
    return ClassMetrics(
        support,
        predicted,
        correct,
        [_ratio(c, n) for c, n in zip(correct, support)],
        [_ratio(c, n) for c, n in zip(correct, predicted)],
    )


def top_k_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Share of images whose label is among the k highest logits, in % (k above the class count: all classes)."""
    if not len(labels):
        return float("nan")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return 100.0 * float((top == labels[:, None]).any(1).double().mean())


def negative_log_likelihood(logits: Tensor, labels: Tensor) -> float:
    """Mean ``-log softmax(logits)[label]`` in nats, computed in float64."""
    if not len(labels):
        return float("nan")
    log_probabilities = logits.double().log_softmax(1)
    return float(-log_probabilities.gather(1, labels.long()[:, None]).mean())
