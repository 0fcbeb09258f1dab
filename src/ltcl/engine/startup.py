"""What a run settles before its first step: absolute paths, the plugins it records, and its run directory.

A new run gets a directory of its own: one that holds a run (a checkpoint) is refused, and the files of an earlier
attempt that died before its first checkpoint are removed, so that a new run never mixes with an old one's files
(config, metrics, TensorBoard events). A resumed run keeps its directory and continues its records.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ltcl import __version__
from ltcl.config import Config
from ltcl.data.datasets import resolve_data_paths
from ltcl.engine.distributed import DistributedContext
from ltcl.engine.report import code_revision
from ltcl.engine.resume import ResumePlan
from ltcl.engine.rundir import RunDir
from ltcl.errors import UserError
from ltcl.methods import method_parts
from ltcl.models import backbone_family
from ltcl.plugins import defining_file


def with_absolute_paths(cfg: Config) -> Config:
    """The config with its data, weights and plugin paths absolute, so that the saved config and checkpoints work
    from any working directory."""
    weights = str(Path(cfg.model.weights).expanduser().resolve()) if cfg.model.weights else ""
    plugins = [str(Path(p).expanduser().resolve()) for p in cfg.plugins]
    return replace(cfg, plugins=plugins, data=resolve_data_paths(cfg.data), model=replace(cfg.model, weights=weights))


def with_recorded_plugins(cfg: Config) -> tuple[Config, list[str]]:
    """``cfg`` with the files of user-defined methods and backbones in ``plugins`` (a method imported in Python
    rather than named with --plugin is recorded too, so that a resume or ``ltcl eval`` finds it), and notes for
    definitions that cannot be recorded (the running script itself)."""
    plugins, notes = list(cfg.plugins), []
    owners = [*method_parts(cfg.loss.objective), backbone_family(cfg.model.backbone).build]
    for owner in owners:
        path = defining_file(owner)
        if path == "__main__":
            notes.append(
                f"{getattr(owner, '__name__', owner)} is defined in the running script, so the run cannot record it: "
                "a resume or ltcl eval will not find it (put it in a plugin file and pass --plugin)"
            )
        elif path is not None and path not in plugins:
            plugins.append(path)
    return replace(cfg, plugins=plugins), notes


def run_directory(cfg: Config, resume: ResumePlan | None) -> RunDir:
    """The run's directory: the resumed checkpoint's, or ``train.output_dir/train.run_name`` for a new run.

    Raises:
        UserError: a new run whose directory already holds a run.
    """
    if resume is not None:
        return resume.run_dir
    run_dir = RunDir.of(cfg)
    if run_dir.holds_run():
        raise UserError(
            f"Run directory {run_dir} already holds a run; continue it with --resume "
            f"{run_dir.last_checkpoint} or pick another train.run_name."
        )
    return run_dir


def run_facts(cfg: Config, ctx: DistributedContext) -> dict:
    """What config.yaml records beside the config: seed, code and library versions, world size, command."""
    return {
        "seed": cfg.train.seed,
        "code_revision": code_revision(),
        "ltcl_version": __version__,
        "torch_version": str(torch.__version__),
        "python": platform.python_version(),
        "world_size": ctx.world_size,
        "command": " ".join(sys.argv),
    }


def open_run_directory(
    run_dir: RunDir, cfg: Config, ctx: DistributedContext, resume: ResumePlan | None, facts: dict, epoch: int
) -> list[str]:
    """Writes (a new run) or continues (a resume) the run directory's records; returns notes for the header.

    Args:
        facts: extra facts for config.yaml (parameter counts).
        epoch: epochs completed (a resume drops the metrics rows of later epochs).
    """
    notes = []
    if resume is None:
        removed = run_dir.clear_failed_attempt()
        if removed:
            notes.append(
                f"{run_dir} held an earlier attempt that saved no checkpoint; its files were removed "
                f"({', '.join(removed)})"
            )
        run_dir.write_config(cfg, run_facts(cfg, ctx) | facts)
        run_dir.record_plugins(cfg.plugins)
    else:
        run_dir.truncate_after(epoch)
        run_dir.append_resume({**resume.record, "code_revision": code_revision()})
    return notes
