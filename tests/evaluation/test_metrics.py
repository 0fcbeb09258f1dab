"""The report's per-image numbers, each against a computation written here: the confusion matrix and per-class
accuracy / precision / recall of a hand-made example, top-5 by hand, and the NLL as a loop over images."""

import math

import pytest
import torch

from ltcl.evaluation.metrics import class_metrics, confusion_matrix, negative_log_likelihood, top_k_accuracy


def test_per_class_accuracy_precision_and_recall_of_a_hand_made_confusion():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 1])
    # rows: true class, columns: predicted class; class 3 is never seen and never predicted
    want = [
        [2, 1, 0, 0],
        [0, 1, 1, 0],
        [1, 1, 2, 0],
        [0, 0, 0, 0],
    ]
    confusion = confusion_matrix(labels, predicted, 4)
    assert confusion.tolist() == want and confusion.dtype == torch.int64

    m = class_metrics(confusion)
    assert m.support == [3, 2, 4, 0] and m.predicted == [3, 3, 3, 0] and m.correct == [2, 1, 2, 0]
    assert m.accuracy == pytest.approx([200 / 3, 50.0, 50.0, None])
    assert m.recall == m.accuracy  # recall of a class is its accuracy
    assert m.precision == pytest.approx([200 / 3, 100 / 3, 200 / 3, None])  # correct / predicted as the class


def test_top_5_by_hand():
    down = [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]  # classes ranked 0, 1, 2, ..., 6
    up = down[::-1]  # classes ranked 6, 5, ..., 0
    logits = torch.tensor([down, down, up, up])
    labels = torch.tensor([4, 5, 0, 2])  # ranks 5 (in), 6 (out), 7 (out), 5 (in)
    assert top_k_accuracy(logits, labels, 5) == pytest.approx(50.0)
    assert top_k_accuracy(logits, labels, 1) == pytest.approx(0.0)
    assert top_k_accuracy(logits[:, :3], torch.tensor([2, 2, 0, 1]), 5) == pytest.approx(100.0)  # k > C: all


def test_nll_against_a_loop_over_images():
    g = torch.Generator().manual_seed(3)
    logits = 4 * torch.randn(50, 6, generator=g)
    labels = torch.randint(0, 6, (50,), generator=g)
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        top = max(row)
        total -= row[y] - top - math.log(sum(math.exp(v - top) for v in row))
    assert negative_log_likelihood(logits, labels) == pytest.approx(total / 50, rel=1e-6)
