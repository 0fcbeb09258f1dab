"""``tensorboard``: event files in the run directory, the metrics row of every epoch as scalars.

A resumed run purges the events of its first epoch and later ones left by the interrupted session, so the directory
holds one stream without duplicates.
"""

from __future__ import annotations

from typing import Any

from ltcl.engine.loggers import EpochLogger, LoggerContext, epoch_scalars, register_logger


@register_logger
class TensorBoardLog(EpochLogger):
    """``train/<name>`` and ``<eval split>/<group>`` scalars, at the epoch as step."""

    name = "tensorboard"

    def __init__(self, context: LoggerContext) -> None:
        super().__init__(context)
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is a declared dependency

        self.writer = SummaryWriter(str(context.run_dir), purge_step=context.first_epoch if context.resumed else None)

    def log_epoch(self, row: dict[str, Any]) -> None:
        for tag, value in epoch_scalars(row).items():
            self.writer.add_scalar(tag, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
