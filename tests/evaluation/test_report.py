"""The assembled report: the legacy summary keys, one JSON object, the files written beside the checkpoint (the
per-class csv, the confusion csv, the figures), the human table, and a confusion figure that stays readable at
1,000 classes."""

import csv
import json

import pytest
import torch

from ltcl.evaluation.figures import plot_confusion
from ltcl.evaluation.priors import PriorShift, sweep
from ltcl.evaluation.render import format_report, write_report
from ltcl.evaluation.report import EvalOptions, build_report

TRAIN = [300, 100, 30, 10]
NAMES = ["ant", "bee", "cat", "dog"]


def outputs(seed=0, n=30):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(n)
    logits = torch.randn(4 * n, 4, generator=g)
    logits[torch.arange(4 * n), labels] += 2.0
    return logits, labels


@pytest.fixture
def report():
    splits = {"val": outputs(1), "test": outputs(0)}
    options = EvalOptions(split="test", test_priors=[PriorShift("forward", 10), PriorShift("backward", 10)])
    return build_report(splits.get, TRAIN, NAMES, options)


def test_the_report_keeps_the_summary_keys_and_is_one_json_object(report):
    logits, labels = outputs(0)
    assert {"split", "images", "many", "medium", "few", "all"} <= set(report)
    assert report["images"] == 120 and report["split"] == "test"
    assert report["all"] == pytest.approx(100 * (logits.argmax(1) == labels).double().mean().item())
    assert report["top1"] == report["all"] and report["top5"] == 100.0
    assert "logit_adjust_tau" not in report and "calibration" not in report
    assert [row["name"] for row in report["per_class"]] == NAMES
    assert [row["group"] for row in report["per_class"]] == ["many", "medium", "medium", "few"]
    assert sum(map(sum, report["confusion"])) == 120
    assert set(report["ece_groups"]) == {"many", "medium", "few"}
    assert [row["prior"] for row in report["test_priors"]] == ["forward10", "backward10"]
    json.loads(json.dumps(report, allow_nan=False))


def test_the_files_beside_the_checkpoint_hold_the_report(report, tmp_path):
    files = write_report(report, tmp_path / "eval_test_last")
    names = {p.name for p in (tmp_path / "eval_test_last").iterdir()}
    assert {"report.json", "per_class.csv", "confusion.csv", "confusion.png", "reliability.png"} <= names
    assert set(files.values()) <= {str(tmp_path / "eval_test_last" / n) for n in names}
    assert json.loads((tmp_path / "eval_test_last" / "report.json").read_text())["all"] == report["all"]
    rows = list(csv.DictReader((tmp_path / "eval_test_last" / "per_class.csv").open()))
    assert [r["name"] for r in rows] == NAMES and float(rows[0]["recall"]) == pytest.approx(
        report["per_class"][0]["recall"]
    )
    with (tmp_path / "eval_test_last" / "confusion.csv").open() as f:
        table = list(csv.reader(f))
    assert table[0][1:] == NAMES and [[int(v) for v in row[1:]] for row in table[1:]] == report["confusion"]


def test_the_human_table_names_what_it_shows(report):
    text = format_report(report)
    for words in ("| Many | Medium | Few | All | Top-5 |", "ECE", "NLL", "ant", "forward10", "told the test prior"):
        assert words in text, words
    # the footnote gives the formula used, with the training prior that is taken out of the logits
    assert "told the test prior: the logits as evaluated + log(test prior)" in text  # balanced logits, as trained
    cross_entropy = format_report({**report, "test_priors_train_weight": -1.0})
    assert "as evaluated - 1 * log(training prior) + log(test prior)" in cross_entropy
    adjusted = format_report({**report, "test_priors_train_weight": 0.2})  # balanced logits, --logit-adjust 0.2
    assert "told the test prior: the logits as evaluated + 0.2 * log(training prior) + log(test prior)" in adjusted


def test_the_confusion_figure_of_1000_classes_is_aggregated_by_shot_group(tmp_path):
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(1, 400, (1000,), generator=g).tolist()
    confusion = torch.randint(0, 3, (1000, 1000), generator=g)
    names = [f"class {j}" for j in range(1000)]
    path = plot_confusion(confusion, counts, names, tmp_path / "confusion.png", many=100, few=20)
    assert path.exists() and path.stat().st_size < 400_000


def test_a_sweep_on_a_small_split_reports_what_it_can_and_names_the_rest():
    options = EvalOptions(split="test", test_priors=sweep(), sweep=True)
    report = build_report({"test": outputs(0)}.get, TRAIN, NAMES, options)  # 30 images a class
    assert [row["prior"] for row in report["test_priors"]] == [p.name for p in sweep()][1:-1]
    assert report["test_priors_left_out"] == {"priors": ["forward50", "backward50"], "smallest_class_images": 30}
    assert "left out: forward50, backward50 (the split's smallest class has 30 images" in format_report(report)


def test_the_test_prior_reweights_the_calibrated_probabilities():
    from ltcl.evaluation.calibration import fit_temperature
    from ltcl.evaluation.priors import shifted_indices

    val, test = outputs(1), outputs(0)
    val = (0.3 * val[0], val[1])  # under-confident: T < 1 sharpens, and the prior then weighs less
    options = EvalOptions(split="test", calibrate="temperature", test_priors=[PriorShift("forward", 10)])
    row = build_report({"val": val, "test": test}.get, TRAIN, NAMES, options)["test_priors"][0]
    temperature = fit_temperature(*val)
    index = torch.as_tensor(shifted_indices(test[1].numpy(), TRAIN, PriorShift("forward", 10)))
    logits, labels = test[0][index].double(), test[1][index]
    prior = torch.bincount(labels, minlength=4).double() / len(labels)
    told = (logits / temperature + prior.log()).argmax(1)
    assert temperature < 0.5 and row["told_prior"]["all"] == pytest.approx(100 * (told == labels).double().mean())
