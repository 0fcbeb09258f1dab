"""Resume is the same run: the config comes from the checkpoint, and only changes that alter nothing the model
sees are accepted.

``ltcl train --resume CKPT`` needs no ``-c``. A ``-c`` file or ``--set`` value that differs from the checkpoint's
config is refused in one sentence naming each key with its old and new value, except for the keys of
``RESUME_MAY_CHANGE`` (progress display, evaluation cadence, loader workers, device, TensorBoard and the other
loggers, and where the data, weights and run live, provided the class counts stay identical). Extending
``optim.epochs`` is a separate, explicit choice (``--extend-epochs``). Every resume appends a record to the run's
``resumes.jsonl``.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ltcl.config import Config, apply_override, changed_keys, describe_changes, from_dict, load_config, to_dict
from ltcl.engine.checkpoint import load_checkpoint
from ltcl.engine.rundir import RunDir
from ltcl.errors import UserError
from ltcl.methods import resolve_config

# Keys that change how a run executes or where its files are, never what it computes.
EXECUTION_KEYS = frozenset({
    "train.progress", "train.eval_every", "train.tensorboard", "train.loggers", "train.device", "train.sync_every",
    "train.checkpoint_every_steps", "data.num_workers", "data.pin_memory", "data.persistent_workers",
    "data.prefetch_factor", "data.eval_batch_size",
})  # fmt: skip
# Where things live. The data paths may move only to data with identical class counts (checked once it is read);
# the weights are in the checkpoint; the run directory is the checkpoint's own folder.
LOCATION_KEYS = frozenset({
    "data.root", "data.train_list", "data.val_list", "data.test_list", "model.weights", "name", "plugins",
    "train.output_dir", "train.run_name",
})  # fmt: skip
RESUME_MAY_CHANGE = EXECUTION_KEYS | LOCATION_KEYS
# Evaluating a checkpoint may also regroup the classes into shot groups.
EVAL_MAY_CHANGE = RESUME_MAY_CHANGE | {"data.many_threshold", "data.few_threshold", "data.skip_corrupt"}


@dataclass
class ResumePlan:
    """A checked resume: the config to run, the checkpoint's contents and what the resume record will say."""

    cfg: Config
    checkpoint: dict[str, Any]
    checkpoint_path: Path
    run_dir: RunDir
    record: dict[str, Any]

    @property
    def finished(self) -> bool:
        """All epochs were trained (the final evaluation may still be missing)."""
        return self.checkpoint["epoch"] >= self.cfg.optim.epochs and self.checkpoint["batch"] == 0


def checked_config(
    saved: dict[str, Any], new: dict[str, Any], allowed: frozenset[str], what: str, hint: str = ""
) -> dict[str, tuple[Any, Any]]:
    """The changes from ``saved`` to ``new``; any change outside ``allowed`` raises one ValueError naming them."""
    changes = changed_keys(saved, new)
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        raise UserError(
            f"{what} would change {describe_changes(refused)}; a checkpoint continues or evaluates "
            f"the run it was saved from, so these keys must keep their saved values{hint}."
        )
    return changes


def plan_resume(
    path: str | Path, config: str | None = None, overrides: Sequence[str] = (), extend_epochs: int | None = None
) -> ResumePlan:
    """Checks a resume request against its checkpoint.

    Args:
        path: the checkpoint to continue (usually ``checkpoint_last.pt``).
        config: an optional YAML config; without it the checkpoint's own config is used.
        overrides: ``--set`` values.
        extend_epochs: a new, larger ``optim.epochs`` (the schedule of the remaining epochs changes with it).

    Raises:
        ValueError: a refused change, or an extension that does not extend.
    """
    path = Path(path)
    checkpoint = load_checkpoint(path)
    check_resumable(path, checkpoint)
    if config is not None:
        new = to_dict(resolve_config(load_config(config, overrides)))
    else:
        new = from_dict_values(checkpoint["config"], overrides)
    saved = resolved_values(checkpoint["config"], with_plugins=False)  # the new plugin places are loaded
    extended = None
    if extend_epochs is not None:
        old_epochs = saved["optim"]["epochs"]
        if extend_epochs <= old_epochs:
            raise UserError(f"--extend-epochs {extend_epochs} does not extend the run's {old_epochs} epochs.")
        new["optim"]["epochs"] = extend_epochs
        saved = {**saved, "optim": {**saved["optim"], "epochs": extend_epochs}}
        extended = [old_epochs, extend_epochs]
    hint = "; to train longer use --extend-epochs N" if "optim.epochs" in changed_keys(saved, new) else ""
    changes = checked_config(saved, new, RESUME_MAY_CHANGE, f"Resuming {path}", hint)
    cfg = from_dict(new)
    run_dir = RunDir(path.resolve().parent)
    cfg = replace(cfg, train=replace(cfg.train, output_dir=str(run_dir.path.parent), run_name=run_dir.path.name))
    record = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(path.resolve()),
        "epoch": checkpoint["epoch"] + 1,  # the epoch training continues in, 1-based as in metrics.csv
        "batch": checkpoint["batch"],  # batches of that epoch done before the interrupt
        "global_step": checkpoint["global_step"],
        "changed": {k: list(v) for k, v in changes.items()},
        "extended_epochs": extended,
        "command": " ".join(sys.argv),
    }
    return ResumePlan(cfg, checkpoint, path, run_dir, record)


def check_resumable(path: Path, checkpoint: dict[str, Any]) -> None:
    """A resume continues a run from its last state, inside its own run directory.

    Raises:
        UserError: the checkpoint is not in a run directory (a copy: resuming it would write a run's records into
            another folder), or it is not the run's last state (checkpoint_best.pt: resuming it would train the
            later epochs again and overwrite the run's records).
    """
    run_dir = RunDir(path.resolve().parent)
    if (run_dir / RunDir.CONFIG).is_file() and "decouple" in run_dir.read_config():
        raise UserError(
            f"{path} is a classifier re-fitted by ltcl decouple, not a training run: re-fit it again with ltcl "
            "decouple (its config.yaml names the source checkpoint) instead of resuming it."
        )
    if not (run_dir / RunDir.CONFIG).is_file():
        raise UserError(
            f"{path} is not inside its run directory (no {RunDir.CONFIG} beside it): resume the checkpoint_last.pt "
            "of the run's own directory, where its records are; a copy would start a second set of records."
        )
    last = run_dir.last_checkpoint
    if path.resolve() != last.resolve():
        if not last.is_file():
            raise UserError(f"{path} is not a run's last state and its run has no {RunDir.LAST}; nothing to resume.")
        saved = load_checkpoint(last)
        where = f"epoch {saved['epoch']}, step {saved['global_step']}"
        raise UserError(
            f"{path} is not the run's last state ({last} is, at {where}): resuming from it would train later epochs "
            f"again and overwrite the run's records; continue with --resume {last} (add --extend-epochs N to train "
            "a finished run longer)."
        )


def resolved_values(values: dict[str, Any], *, with_plugins: bool = True) -> dict[str, Any]:
    """A config dict as the run used it: every key present, the method's section complete (its plugins loaded,
    unless ``with_plugins`` is False)."""
    return to_dict(resolve_config(from_dict(values), with_plugins=with_plugins))


def from_dict_values(saved: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A deep copy of a saved config dict with ``--set`` overrides applied (type-checked and resolved)."""
    values = to_dict(from_dict(saved))
    for text in overrides:
        apply_override(values, text)
    return resolved_values(values)
