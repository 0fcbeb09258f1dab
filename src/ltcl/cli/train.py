"""``ltcl train``: one run, fresh or resumed, then its plots."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ltcl.cli.common import UserError, add_device_option, add_set_option, device_override


def cmd_train(args: argparse.Namespace) -> int:
    from ltcl.analysis.run_plots import make_run_plots
    from ltcl.config import load_config
    from ltcl.engine.resume import plan_resume
    from ltcl.engine.rundir import RunDir
    from ltcl.engine.trainer import train

    args.overrides = device_override(args.device, args.overrides, "train.device")
    if args.resume:
        if args.plugin:
            raise UserError("--plugin starts a run; a resumed run loads the plugins recorded in its config.")
        plan = plan_resume(args.resume, args.config, args.overrides, args.extend_epochs)
        result = train(plan.cfg, resume=plan)
    else:
        if args.config is None:
            raise UserError("Give a config with -c CONFIG.yaml, or continue a run with --resume CHECKPOINT.")
        if args.extend_epochs is not None:
            raise UserError("--extend-epochs continues a run: use it with --resume CHECKPOINT.")
        cfg = load_config(args.config, args.overrides)
        result = train(replace(cfg, plugins=[*cfg.plugins, *(str(Path(p).resolve()) for p in args.plugin)]))
    if not result.already_finished:
        run_dir = RunDir(result.run_dir)
        run_dir.link_plots(make_run_plots(run_dir.path))
    return 0


def register(commands) -> None:
    p = commands.add_parser(
        "train",
        help="train a config; prints progress and the final Many/Medium/Few/All table",
        description="Train one configured run. Writes config.yaml, metrics.csv, checkpoints, "
        "results.json, plots and report.md to train.output_dir/train.run_name. SIGINT and "
        "SIGTERM save checkpoint_last.pt after the current step (exit 130 / 143); a non-finite "
        "loss stops the run without saving (exit 3).",
    )
    p.add_argument("-c", "--config", help="YAML config file (see configs/); optional with --resume")
    add_set_option(p)
    add_device_option(p, config_key="train.device")
    p.add_argument(
        "--resume",
        metavar="CHECKPOINT",
        help="continue the run of this checkpoint (never automatic); its config is the run's config, and "
        "a -c or --set value that would change what the model sees is refused",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py",
        help="a Python file that registers your own method or backbone (ltcl.register_objective, "
        "ltcl.register_backbone); repeatable, recorded with the run",
    )
    p.add_argument(
        "--extend-epochs",
        type=int,
        metavar="N",
        help="with --resume: train to N epochs instead of the saved optim.epochs (recorded in resumes.jsonl)",
    )
    p.set_defaults(run=cmd_train)
