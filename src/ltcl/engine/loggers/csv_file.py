"""``csv``: metrics.csv, one row per epoch (the run's own record: report, plots, resume and ltcl compare read it).

A resume continues the file: the rows of the epochs it trains again were dropped when the run directory was
reopened (``RunDir.truncate_after``).
"""

from __future__ import annotations

from typing import Any

from ltcl.engine.loggers import EpochLogger, LoggerContext, register_logger
from ltcl.engine.rundir import RunDir


@register_logger
class CsvLog(EpochLogger):
    name = "csv"

    def __init__(self, context: LoggerContext) -> None:
        super().__init__(context)
        self.run_dir = RunDir(context.run_dir)

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.run_dir.append_metrics(row)
