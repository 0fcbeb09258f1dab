"""The ECE columns of ``ltcl compare``: a run's expected calibration error, overall and per shot group, read from
the report ``ltcl eval`` wrote of its test split (:func:`read_eval_ece`, :data:`EVAL_REPORTS`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltcl.data.longtail import ACCURACY_COLUMNS, SHOT_GROUPS
from ltcl.errors import UserError

# Where ltcl eval writes its report of a run's test split: beside checkpoint_last.pt (the model whose accuracy these
# tables show) in eval_test_last/, or in eval_test/. Its "ece" is the expected calibration error in % (overall) and
# "ece_groups" that of each shot group's images; with --calibrate temperature, "calibration" keeps the model's own
# ECE as "ece_before" / "ece_groups_before".
EVAL_REPORTS = (Path("eval_test_last") / "report.json", Path("eval_test") / "report.json")


@dataclass
class EvalCalibration:
    """The ECE columns of one run's eval report: ``ece_many`` ... ``ece_all`` (None where it has none), the report
    read (None: the run has none) and the logit adjustment τ its outputs had (0: none)."""

    values: dict[str, float | None]
    report: Path | None = None
    logit_adjust_tau: float = 0.0


def read_eval_ece(run_dir: str | Path) -> EvalCalibration:
    """The model's own ECE (before any temperature scaling) overall and per shot group, from the run's eval report.

    Raises:
        UserError: the report is not a JSON object.
    """
    values: dict[str, float | None] = {f"ece_{g}": None for g in ACCURACY_COLUMNS}
    path = next((Path(run_dir) / p for p in EVAL_REPORTS if (Path(run_dir) / p).is_file()), None)
    if path is None:
        return EvalCalibration(values)
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError:
        report = None
    if not isinstance(report, dict):
        raise UserError(f"{path} is not an ltcl eval report (not a JSON object).")
    calibration = report.get("calibration") if isinstance(report.get("calibration"), dict) else {}
    overall = calibration.get("ece_before", report.get("ece"))
    groups = calibration.get("ece_groups_before", report.get("ece_groups"))
    if isinstance(overall, dict):  # {"all": ..., "many": ...} in one mapping
        groups, overall = overall, overall.get("all", overall.get("overall"))
    for g in SHOT_GROUPS:
        values[f"ece_{g}"] = _float((groups or {}).get(g)) if isinstance(groups, dict) else None
    values["ece_all"] = _float(overall)
    return EvalCalibration(values, path, _float(report.get("logit_adjust_tau")) or 0.0)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
