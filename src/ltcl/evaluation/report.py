"""The report of one split, assembled from the logits of the splits it needs.

Order of work, so that nothing is chosen on the evaluated split: the validation outputs are read first, when
``--logit-adjust auto`` or ``--calibrate temperature`` asks for them, and tau (by balanced accuracy) and then the
temperature (by NLL, on the adjusted logits) are fitted there; only then is the evaluated split read, once, and
scored with them. Probabilities are ``softmax(adjusted logits / T)`` (T = 1 without calibration).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ltcl.data.longtail import SHOT_GROUPS, shot_groups
from ltcl.errors import UserError
from ltcl.evaluation.adjust import adjust_logits, choose_tau
from ltcl.evaluation.calibration import (
    ECE_BINS,
    expected_calibration_error,
    fit_temperature,
    group_calibration_errors,
    group_masks,
    reliability_bins,
)
from ltcl.evaluation.metrics import class_metrics, confusion_matrix, negative_log_likelihood, top_k_accuracy
from ltcl.evaluation.priors import PriorShift, evaluate_priors, group_accuracy, sweepable

Outputs = Callable[[str], "tuple[Tensor, Tensor] | None"]  # split -> (logits, labels), None for a missing split


@dataclass
class EvalOptions:
    """What the report holds beyond the plain scores.

    Attributes:
        split: the evaluated split (val or test).
        logit_adjust: tau, ``"auto"`` (chosen on val) or None (the logits as trained).
        calibrate: ``"temperature"`` (fitted on val) or None.
        test_priors: shifted test priors to evaluate the split under (:mod:`.priors`).
        sweep: the priors are a sweep: those the split cannot hold are left out (and named), not refused.
        many, few: the shot-group thresholds.
        balanced_logits: the method's logits are meant for a uniform label prior (``Objective.balanced_logits``).
        val_hint: how this run gets a validation split, for the refusal when it has none.
    """

    split: str = "test"
    logit_adjust: float | str | None = None
    calibrate: str | None = None
    test_priors: Sequence[PriorShift] = field(default_factory=list)
    sweep: bool = False
    many: int = 100
    few: int = 20
    val_hint: str = "give the run a validation split"
    balanced_logits: bool = True  # the method's logits are meant for a uniform prior (see .priors)


def _validation(outputs: Outputs, options: EvalOptions, what: str) -> tuple[Tensor, Tensor]:
    val = outputs("val")
    if val is None:
        raise UserError(
            f"{what} is fitted on the validation split, never on the test split, and this run has none: "
            f"{options.val_hint}."
        )
    return val


def _fit_on_validation(outputs: Outputs, counts: list[int], options: EvalOptions) -> tuple[float, float, dict, tuple]:
    """tau and the temperature, each given or fitted on the validation split (read here, before any other split).

    Returns:
        (tau, temperature, the report's entries about the fit, the validation outputs or None).
    """
    tau, temperature, entries, val = 0.0, 1.0, {}, None
    if options.logit_adjust == "auto":
        val = _validation(outputs, options, "--logit-adjust auto")
        choice = choose_tau(*val, counts)
        tau = choice.tau
        entries["logit_adjust_auto"] = {
            "tau": tau,
            "chosen_on": "val",
            "images": len(val[1]),
            "criterion": "balanced accuracy (%)",
            "grid": {f"{t:g}": score for t, score in choice.scores.items()},
        }
    elif options.logit_adjust is not None:
        tau = float(options.logit_adjust)
    if options.calibrate == "temperature":
        val = val if val is not None else _validation(outputs, options, "--calibrate temperature")
        val_logits = adjust_logits(val[0], counts, tau)
        temperature = fit_temperature(val_logits, val[1])
        entries["calibration"] = {
            "method": "temperature",
            "temperature": temperature,
            "fitted_on": "val",
            "val_nll_before": negative_log_likelihood(val_logits, val[1]),
            "val_nll_after": negative_log_likelihood(val_logits / temperature, val[1]),
        }
    return tau, temperature, entries, val


def _probability_scores(logits: Tensor, labels: Tensor, counts: list[int], options: EvalOptions) -> dict:
    """What depends on the probabilities ``softmax(logits)``: NLL, ECE overall and per shot group, and the
    reliability bins overall and per shot group."""
    probabilities = logits.double().softmax(1)
    masks = group_masks(labels, counts, options.many, options.few)
    return {
        "nll": negative_log_likelihood(logits, labels),
        "ece": expected_calibration_error(probabilities, labels, ECE_BINS),
        "ece_groups": group_calibration_errors(probabilities, labels, counts, many=options.many, few=options.few),
        "reliability": reliability_bins(probabilities, labels, ECE_BINS),
        "reliability_groups": {
            name: reliability_bins(probabilities[mask], labels[mask], ECE_BINS)
            for name, mask in masks.items()
            if mask.any()
        },
    }


def _per_class(logits: Tensor, labels: Tensor, counts: list[int], class_names, options: EvalOptions) -> dict:
    """The per-class rows and the confusion matrix."""
    confusion = confusion_matrix(labels, logits.argmax(1), len(counts))
    metrics = class_metrics(confusion)
    groups = shot_groups(counts, many=options.many, few=options.few).tolist()
    rows = [
        {
            "class": j,
            "name": str(class_names[j]),
            "train_images": counts[j],
            "group": SHOT_GROUPS[groups[j]],
            "images": metrics.support[j],
            "predicted": metrics.predicted[j],
            "accuracy": metrics.accuracy[j],
            "precision": metrics.precision[j],
            "recall": metrics.recall[j],
        }
        for j in range(len(counts))
    ]
    return {"per_class": rows, "confusion": confusion.tolist()}


def _shifted_priors(logits: Tensor, labels: Tensor, counts: list[int], options: EvalOptions, tau: float) -> dict:
    priors, entries = list(options.test_priors), {}
    if options.sweep:
        priors, left_out = sweepable(priors, labels, counts)
        if left_out:
            smallest = int(torch.bincount(labels, minlength=len(counts)).min())
            entries["test_priors_left_out"] = {"priors": left_out, "smallest_class_images": smallest}
    if priors:
        weight = tau - (0.0 if options.balanced_logits else 1.0)  # the training prior still in the logits, taken out
        entries["test_priors"] = evaluate_priors(
            logits, labels, counts, priors, many=options.many, few=options.few, train_weight=weight
        )
        entries["test_priors_train_weight"] = weight
    return entries


def build_report(
    outputs: Outputs, train_counts: Sequence[int], class_names: Sequence[str], options: EvalOptions
) -> dict:
    """The report as one JSON-ready dict (``many``, ``medium``, ``few``, ``all``, ``top1``, ``top5`` in %, NLL
    in nats, ECE in %); see docs/conventions.md, "Evaluation report".

    Args:
        outputs: the logits and labels of a split, in dataset order, all of it (:func:`.gather.predict_dataset`);
            called for ``val`` before ``options.split`` when something is fitted, and once per split.
    """
    counts = list(train_counts)
    tau, temperature, fitted, val = _fit_on_validation(outputs, counts, options)
    evaluated = val if options.split == "val" and val is not None else outputs(options.split)
    if evaluated is None:
        raise UserError(f"This run has no '{options.split}' split.")
    logits, labels = adjust_logits(evaluated[0], counts, tau), evaluated[1].long()

    report: dict = {"split": options.split, **fitted}
    if options.logit_adjust is not None:
        report["logit_adjust_tau"] = tau
    summary = group_accuracy(logits, labels, counts, options.many, options.few)
    report |= {"images": len(labels), **summary, "top1": summary["all"], "top5": top_k_accuracy(logits, labels, 5)}
    scores = _probability_scores(logits / temperature, labels, counts, options)
    if "calibration" in report:
        before = _probability_scores(logits, labels, counts, options)
        report["calibration"] |= {
            "nll_before": before["nll"],
            "nll_after": scores["nll"],
            "ece_before": before["ece"],
            "ece_after": scores["ece"],
            "ece_groups_before": before["ece_groups"],
        }
    report |= {key: scores[key] for key in ("nll", "ece", "ece_groups")}
    report |= {"ece_bins": ECE_BINS, "reliability": scores["reliability"]}
    report |= {"reliability_groups": scores["reliability_groups"]}
    report["shot_groups"] = {"many_threshold": options.many, "few_threshold": options.few}
    report |= _per_class(logits, labels, counts, class_names, options)
    # The prior multiplies the probabilities the report stands by: those of the calibrated logits, when calibrated.
    return report | _shifted_priors(logits / temperature, labels, counts, options, tau or 0.0)
