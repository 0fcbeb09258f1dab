"""Expected calibration error against a float64 loop over 15 equal-width bins (overall and per shot group), and
temperature scaling: it lowers the validation NLL to the minimum a fine grid finds."""

import math

import pytest
import torch

from ltcl.evaluation.calibration import (
    ECE_BINS,
    expected_calibration_error,
    fit_temperature,
    group_calibration_errors,
    reliability_bins,
)
from ltcl.evaluation.metrics import negative_log_likelihood


def loop_ece(probabilities, labels, bins=15):
    """ECE in %, written as the definition: bins (b/15, (b+1)/15], weight = share of images in the bin."""
    confidence = [max(row) for row in probabilities.double().tolist()]
    correct = [float(row.index(max(row)) == y) for row, y in zip(probabilities.double().tolist(), labels.tolist())]
    n, ece = len(confidence), 0.0
    for b in range(bins):
        lower, upper = b / bins, (b + 1) / bins
        members = [i for i in range(n) if lower < confidence[i] <= upper]
        if members:
            accuracy = sum(correct[i] for i in members) / len(members)
            mean_confidence = sum(confidence[i] for i in members) / len(members)
            ece += len(members) / n * abs(accuracy - mean_confidence)
    return 100.0 * ece


def sample(n=400, classes=5, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = scale * torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += scale  # informative, and over-confident at large scales
    return logits, labels


def test_ece_against_a_float64_loop_over_15_bins():
    assert ECE_BINS == 15
    logits, labels = sample()
    probabilities = logits.softmax(1)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(loop_ece(probabilities, labels), abs=1e-9)
    bins = reliability_bins(probabilities, labels)
    assert len(bins) == 15 and sum(b["images"] for b in bins) == len(labels)
    assert bins[0]["lower"] == 0.0 and bins[-1]["upper"] == 1.0


def test_ece_per_shot_group_takes_the_images_of_the_group_s_classes():
    logits, labels = sample(seed=1)
    probabilities = logits.softmax(1)
    train_counts = [500, 150, 60, 30, 5]  # many, many, medium, medium, few
    got = group_calibration_errors(probabilities, labels, train_counts, many=100, few=20)
    for name, classes in (("many", [0, 1]), ("medium", [2, 3]), ("few", [4])):
        chosen = torch.isin(labels, torch.tensor(classes))
        assert got[name] == pytest.approx(loop_ece(probabilities[chosen], labels[chosen]), abs=1e-9), name
    assert group_calibration_errors(probabilities, labels, [50] * 5, many=100, few=20)["many"] is None  # empty


def test_temperature_scaling_lowers_the_validation_nll_to_its_minimum():
    logits, labels = sample(scale=6.0, seed=2)  # over-confident
    temperature = fit_temperature(logits, labels)
    before, after = negative_log_likelihood(logits, labels), negative_log_likelihood(logits / temperature, labels)
    assert temperature > 1 and after < before - 0.05
    grid = [10 ** (k / 200) for k in range(-200, 201)]  # T from 0.1 to 10
    best = min(negative_log_likelihood(logits.double() / t, labels) for t in grid)
    assert after <= best + 1e-6
    loop = -sum(
        row[y] / temperature - math.log(sum(math.exp(v / temperature) for v in row))
        for row, y in zip(logits.double().tolist(), labels.tolist())
    ) / len(labels)
    assert after == pytest.approx(loop, rel=1e-6)
