"""``wandb``: Weights & Biases, the optional extra (``pip install 'ltcl[wandb]'``).

One W&B run per run directory: project ``$WANDB_PROJECT`` (default ``ltcl``), named after the run directory, with
the resolved config, the metrics row of every epoch at the epoch as step (``train/<name>``, ``val/<group>``), and
its files under ``<run dir>/wandb/``. wandb reads its own environment: ``WANDB_MODE=offline`` writes
``wandb/offline-run-*`` without a network (``wandb sync`` uploads it later), ``WANDB_ENTITY``, ``WANDB_API_KEY``.
ltcl's console stays its own (wandb's console capture is off).

A resume continues the same W&B run: its id is kept in ``wandb/ltcl_run_id`` and the resumed session logs from its
first epoch on (``resume="allow"``). Offline, wandb cannot resume (wandb/wandb#4624): each session writes its own
``offline-run-*-<id>`` directory under the same id, with that session's epochs only.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from ltcl.config import to_dict
from ltcl.engine.loggers import EpochLogger, LoggerContext, LoggerUnavailable, epoch_scalars, register_logger

ID_FILE = "ltcl_run_id"  # in <run dir>/wandb/, next to wandb's own files


@register_logger
class WandbLog(EpochLogger):
    name = "wandb"

    def __init__(self, context: LoggerContext) -> None:
        super().__init__(context)
        try:
            import wandb
        except ImportError:
            raise LoggerUnavailable("wandb is not installed: pip install 'ltcl[wandb]'") from None
        folder = context.run_dir / "wandb"
        id_file = folder / ID_FILE
        if context.resumed and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:  # a new run directory (or one whose first attempt failed) is a new W&B run
            run_id = uuid.uuid4().hex[:8]
        folder.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "ltcl",
            name=context.run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(context.run_dir),
            config=to_dict(context.cfg),
            settings=wandb.Settings(console="off"),
        )

    def log_epoch(self, row: dict[str, Any]) -> None:
        # committed now, not when the next step arrives: a run that stops keeps its last epoch
        self.run.log({**epoch_scalars(row), "epoch": row["epoch"]}, step=row["epoch"], commit=True)

    def close(self) -> None:
        self.run.finish()
