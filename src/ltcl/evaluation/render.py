"""The report for people and for files: the table ``ltcl eval`` prints, and the directory it writes (report.json,
per_class.csv, confusion.csv and the figures of :mod:`.figures`)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ltcl.data.longtail import SHOT_GROUPS
from ltcl.engine.evaluate import format_cell

PRINTED_CLASSES = 30  # up to this many classes, the table lists every class; beyond, the 10 least accurate


def _number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _views(report: dict) -> int:
    return (report.get("tta") or {}).get("views", 1)


def _summary_table(report: dict) -> list[str]:
    # the row itself names the views, so that a copied row of averaged views is not taken for a single-view one
    label = report["split"] + (f" (TTA, {_views(report)} views)" if _views(report) > 1 else "")
    lines = [
        "| | Many | Medium | Few | All | Top-5 | NLL | ECE |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {label} | {format_cell(report['many'])} | {format_cell(report['medium'])} | "
        f"{format_cell(report['few'])} | {format_cell(report['all'])} | {format_cell(report['top5'])} | "
        f"{_number(report['nll'], 3)} | {_number(report['ece'])} |",
    ]
    groups = ", ".join(f"{g} {_number(report['ece_groups'][g])}" for g in SHOT_GROUPS)
    lines.append(f"ECE (%, {report['ece_bins']} equal-width confidence bins) by shot group of the true class: {groups}")
    return lines


def _adjustment_lines(report: dict) -> list[str]:
    lines = []
    auto = report.get("logit_adjust_auto")
    if "logit_adjust_tau" in report:
        line = f"logit adjustment applied: logits - {report['logit_adjust_tau']:g} * log(training prior)"
        if auto:
            grid = [float(t) for t in auto["grid"]]
            best = auto["grid"][format(auto["tau"], "g")]
            line += (
                f", tau chosen on val ({auto['images']:,} images; balanced accuracy {best:.2f}%, the best over tau "
                f"{min(grid):g}..{max(grid):g})"
            )
        lines.append(line)
    calibration = report.get("calibration")
    if calibration:
        lines.append(
            f"temperature scaling: T = {calibration['temperature']:.3f} fitted on val (NLL "
            f"{calibration['val_nll_before']:.3f} -> {calibration['val_nll_after']:.3f}); on {report['split']}: "
            f"ECE {_number(calibration['ece_before'])} -> {_number(calibration['ece_after'])}%, NLL "
            f"{calibration['nll_before']:.3f} -> {calibration['nll_after']:.3f}"
        )
    if report["split"] == "val" and (auto or calibration):
        lines.append("note: fitted and evaluated on the same val split, so these numbers are optimistic")
    return lines


def _class_lines(report: dict) -> list[str]:
    rows = report["per_class"]
    title = "per class (%)"
    if len(rows) > PRINTED_CLASSES:
        scored = [r for r in rows if r["accuracy"] is not None]
        rows = sorted(scored, key=lambda r: (r["accuracy"], r["class"]))[:10]
        title = f"the 10 least accurate of {len(report['per_class'])} classes (%; every class in per_class.csv)"
    lines = [
        title,
        "| class | name | train images | group | images | accuracy (= recall) | precision |",
        "| ---: | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['class']} | {r['name']} | {r['train_images']} | {r['group']} | {r['images']} | "
            f"{format_cell(r['accuracy'])} | {format_cell(r['precision'])} |"
        )
    return lines


def _prior_lines(report: dict) -> list[str]:
    lines = [
        "shifted test priors (SADE's test-agnostic protocol: the split subsampled by training-count rank), accuracy %",
        "| test prior | images | Many | Medium | Few | All | All, told the test prior |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report.get("test_priors", []):
        plain, told = row["as_evaluated"], row["told_prior"]
        lines.append(
            f"| {row['prior']} | {row['images']:,} | {format_cell(plain['many'])} | {format_cell(plain['medium'])} | "
            f"{format_cell(plain['few'])} | {format_cell(plain['all'])} | {format_cell(told['all'])} |"
        )
    scaled = " / T" if "calibration" in report else ""
    # the formula actually used: the training prior still in the evaluated logits is taken out (see priors.py)
    weight = report.get("test_priors_train_weight", 0.0)
    train = f" {'+' if weight > 0 else '-'} {abs(weight):g} * log(training prior)" if weight else ""
    lines.append(f"told the test prior: the logits as evaluated{scaled}{train} + log(test prior)")
    left_out = report.get("test_priors_left_out")
    if left_out:
        lines.append(
            f"left out: {', '.join(left_out['priors'])} (the split's smallest class has "
            f"{left_out['smallest_class_images']} images, so R can be at most that)"
        )
    return lines


def format_report(report: dict) -> str:
    """The human table of :func:`.report.build_report`'s dict (with ``checkpoint``, ``epoch`` and ``report_dir``
    when the command line added them)."""
    lines = []
    if "checkpoint" in report:
        lines.append(
            f"{report['checkpoint']} (epoch {report['epoch']}), {report['images']:,} {report['split']} images, "
            f"accuracy in %"
        )
    if _views(report) > 1:
        lines.append(f"test-time augmentation: {_views(report)} views, {report['tta']['method']}")
    lines += _adjustment_lines(report) + _summary_table(report) + [""] + _class_lines(report)
    if report.get("test_priors") or report.get("test_priors_left_out"):
        lines += [""] + _prior_lines(report)
    if report.get("files"):
        names = ", ".join(Path(path).name for path in report["files"].values())
        lines += ["", f"full report: {report['report_dir']} ({names})"]
    return "\n".join(lines)


def write_report(report: dict, out_dir: str | Path) -> dict[str, str]:
    """Writes report.json, per_class.csv, confusion.csv and the figures into ``out_dir``; returns name -> path."""
    from ltcl.evaluation.figures import plot_confusion, plot_prior_sweep, plot_reliability

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"report": out / "report.json", "per_class": out / "per_class.csv", "confusion": out / "confusion.csv"}
    columns = ["class", "name", "train_images", "group", "images", "predicted", "accuracy", "precision", "recall"]
    with files["per_class"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: "" if row[k] is None else row[k] for k in columns} for row in report["per_class"])
    names = [row["name"] for row in report["per_class"]]
    with files["confusion"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names])
        writer.writerows([name, *row] for name, row in zip(names, report["confusion"]))
    counts = [row["train_images"] for row in report["per_class"]]
    thresholds = report["shot_groups"]
    many, few = thresholds["many_threshold"], thresholds["few_threshold"]
    files["confusion_png"] = plot_confusion(
        report["confusion"], counts, names, out / "confusion.png", many=many, few=few
    )
    files["reliability_png"] = plot_reliability(report, out / "reliability.png")
    if len(report.get("test_priors") or []) > 1:
        files["prior_sweep_png"] = plot_prior_sweep(report["test_priors"], out / "prior_sweep.png")
    paths = {key: str(path) for key, path in files.items()}
    files["report"].write_text(json.dumps(report | {"files": paths}, indent=1, allow_nan=False) + "\n")
    return paths
