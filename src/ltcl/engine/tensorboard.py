"""TensorBoard event files of a run (``train.tensorboard``): the metrics row of every epoch, rank 0 only."""

from __future__ import annotations

import sys
from pathlib import Path

from ltcl.data.longtail import ACCURACY_COLUMNS


class TensorBoardLog:
    """Writes each epoch's numbers as scalars: ``train/<name>`` and ``<eval split>/<group>``.

    Args:
        run_dir: where the event files go (the run directory).
        enabled: ``train.tensorboard`` on the main process; otherwise every call does nothing.
        first_epoch: the first epoch (1-based) this session logs; a resumed run purges the events of that epoch
            and later ones left by the interrupted session, so the directory holds one stream without duplicates.
    """

    def __init__(self, run_dir: Path, enabled: bool, first_epoch: int = 1) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            # A resumed run continues the same stream: events of the epochs it trains again are dropped.
            self.writer = SummaryWriter(str(run_dir), purge_step=first_epoch if first_epoch > 1 else None)
        except ImportError:  # tensorboard is a declared dependency; a broken install must not stop training
            print("note: TensorBoard is not importable; continuing without event files.", file=sys.stderr)

    def log_epoch(self, row: dict) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step"):
                tag = f"{row['eval_split']}/{key}" if key in ACCURACY_COLUMNS else f"train/{key}"
                self.writer.add_scalar(tag, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
