"""``ltcl decouple``: re-fit the classifier of a trained run on its frozen backbone (cRT, LWS, tau-norm, NCM,
DisAlign, MiSLAS's second stage), written as a new run directory."""

from __future__ import annotations

import argparse

from ltcl.cli.common import add_device_option, add_set_option, device_override

EPILOG = """examples:
  ltcl decouple --checkpoint runs/digits_lt/checkpoint_last.pt --method crt
  ltcl decouple --checkpoint runs/digits_lt/checkpoint_last.pt --method tau_norm     # tau chosen on val
  ltcl decouple --checkpoint runs/digits_lt/checkpoint_best.pt --method lws --set decouple.epochs=10
  ltcl decouple --checkpoint runs/digits_lt/checkpoint_last.pt --method ncm --out runs/digits_ncm
  ltcl eval --checkpoint runs/digits_lt_crt/checkpoint_last.pt
"""


def cmd_decouple(args: argparse.Namespace) -> int:
    from ltcl.decouple import decouple

    overrides = device_override(args.device, args.overrides, "train.device")
    decouple(args.checkpoint, args.method, overrides, out=args.out)
    return 0


def register(commands) -> None:
    p = commands.add_parser(
        "decouple",
        help="re-fit the classifier of a trained run on its frozen backbone (crt, lws, tau_norm, ncm, ...)",
        description="Keep the backbone of a trained checkpoint frozen and fit a new classifier with the sampler, "
        "loss and schedule of a two-stage method's paper. The result is a run directory of its own (default "
        "<run>_<method> beside the source run) with config.yaml, metrics.csv, checkpoint_last.pt, "
        "checkpoint_best.pt (best on the validation split), results.json and report.md, which ltcl eval, predict "
        "and compare read like any other run. The method's values are set with --set decouple.<key>=value "
        "(ltcl methods lists them); the test split is scored once, at the end.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="the trained run's checkpoint")
    p.add_argument(
        "--method",
        required=True,
        metavar="NAME",
        help="the re-fitter: crt | lws | tau_norm | ncm | disalign | mislas (ltcl methods lists them)",
    )
    p.add_argument("--out", metavar="DIR", help="the new run directory (default: <run>_<method> beside the run)")
    add_set_option(
        p,
        "the method's section (decouple.<key>) or the run's config where it leaves the backbone's data and network "
        "unchanged (data paths, loader settings, train.seed, train.max_steps_per_epoch, data.val_per_class)",
        example="--set decouple.epochs=5 --set decouple.bn=frozen",
    )
    add_device_option(p, config_key="train.device")
    p.set_defaults(run=cmd_decouple)
