"""Post-hoc adjustment chosen on validation: auto tau maximises the validation balanced accuracy and the test
split is never read before it is chosen (a val / test pair whose best taus differ); temperature scaling is fitted
on validation only; a run without a validation split refuses auto in one sentence."""

import pytest
import torch

from ltcl.errors import UserError
from ltcl.evaluation.adjust import TAU_GRID, adjust_logits, choose_tau
from ltcl.evaluation.calibration import fit_temperature
from ltcl.evaluation.report import EvalOptions, build_report

TRAIN = [300, 100, 30, 10]


def signal(n, seed, bias):
    """Logits that know the class a little, plus ``bias * log prior`` (a CE-trained model's tilt to the head)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(n)
    logits = torch.randn(4 * n, 4, generator=g)
    logits[torch.arange(4 * n), labels] += 1.5
    prior = torch.tensor(TRAIN, dtype=torch.float32) / sum(TRAIN)
    return logits + bias * prior.log(), labels


def loop_best_tau(logits, labels):
    """The first tau of the grid with the highest mean per-class accuracy, as a loop."""
    best, best_score = None, -1.0
    for tau in TAU_GRID:
        predicted = (logits - tau * torch.tensor(TRAIN, dtype=torch.float32).div(sum(TRAIN)).log()).argmax(1)
        accs = [float((predicted[labels == c] == c).float().mean()) for c in range(4)]
        score = sum(accs) / 4
        if score > best_score + 1e-12:
            best, best_score = tau, score
    return best


class Splits:
    """The outputs of each split, recording which split was read when."""

    def __init__(self, **splits):
        self.splits, self.reads = splits, []

    def __call__(self, split):
        self.reads.append(split)
        return self.splits.get(split)


def test_auto_tau_is_chosen_on_validation_never_on_test():
    val, test = signal(60, seed=0, bias=1.0), signal(60, seed=1, bias=0.0)
    val_tau, test_tau = loop_best_tau(*val), loop_best_tau(*test)
    assert val_tau != test_tau and val_tau >= 0.5 and test_tau <= 0.3  # the pair tells the two apart
    assert choose_tau(*val, TRAIN).tau == val_tau

    splits = Splits(val=val, test=test)
    report = build_report(splits, TRAIN, ["a", "b", "c", "d"], EvalOptions(split="test", logit_adjust="auto"))
    assert splits.reads == ["val", "test"]  # test is read once, after the choice
    assert report["logit_adjust_tau"] == val_tau
    assert report["logit_adjust_auto"]["chosen_on"] == "val" and report["logit_adjust_auto"]["images"] == 240
    want = (adjust_logits(test[0], TRAIN, val_tau).argmax(1) == test[1]).double().mean().item()
    assert report["all"] == pytest.approx(100 * want)


def test_temperature_is_fitted_on_validation_never_on_test():
    val, test = signal(60, seed=0, bias=0.0), signal(60, seed=1, bias=0.0)
    val = (5 * val[0], val[1])  # over-confident on val; test has another scale, so another best temperature
    splits = Splits(val=val, test=test)
    report = build_report(splits, TRAIN, list("abcd"), EvalOptions(split="test", calibrate="temperature"))
    assert splits.reads == ["val", "test"]
    calibration = report["calibration"]
    assert calibration["temperature"] == pytest.approx(fit_temperature(*val))
    assert calibration["temperature"] != pytest.approx(fit_temperature(*test), rel=0.05)
    assert calibration["fitted_on"] == "val" and calibration["val_nll_after"] < calibration["val_nll_before"]
    assert set(calibration) >= {"ece_before", "ece_after", "nll_before", "nll_after"}


def test_auto_and_temperature_refuse_a_run_without_validation_split():
    splits = Splits(test=signal(10, seed=1, bias=0.0))
    for options in (EvalOptions(split="test", logit_adjust="auto"), EvalOptions(split="test", calibrate="temperature")):
        with pytest.raises(UserError, match="validation split") as info:
            build_report(splits, TRAIN, list("abcd"), options)
        assert "test" not in splits.reads and str(info.value).count(". ") == 0
