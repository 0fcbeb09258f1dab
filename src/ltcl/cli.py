"""The ``ltcl`` command line: train, eval, predict, data (and the analyses registered in ltcl.analysis.cli).

A user's mistake (bad key, missing file, corrupt image) ends with one clear sentence on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from ltcl.config import ConfigError, load_config

EPILOG = """examples:
  ltcl data  -c configs/cifar10_lt_if100_acl.yaml --set data.root=../shared/data/cifar10_jpeg.npz
  ltcl train -c configs/digits_lt.yaml --set optim.epochs=5 --set loss.objective=bs
  ltcl train -c configs/digits_lt.yaml --resume runs/digits_lt/checkpoint_last.pt
  torchrun --nproc-per-node 4 -m ltcl.cli train -c configs/imagenet_lt_x50_acl.yaml
  ltcl eval    --checkpoint runs/digits_lt/checkpoint_last.pt --split test
  ltcl predict --checkpoint runs/digits_lt/checkpoint_last.pt image1.png image2.jpg
"""

SET_HELP = "override a config value, e.g. --set optim.lr=0.1 --set views.sizes=32,32,24,24 (repeatable)"


class UserError(Exception):
    """Raised for mistakes the user can fix; printed without a traceback."""


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)


def cmd_train(args: argparse.Namespace) -> int:
    from ltcl.engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    train(cfg, resume=args.resume)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ltcl.engine.evaluate import format_table
    from ltcl.engine.inference import evaluate_split, load_trained_model

    trained = load_trained_model(args.checkpoint, args.overrides, device=args.device)
    result = evaluate_split(trained, args.split)
    if args.json:
        print(json.dumps({"split": args.split, "epoch": trained.epoch, **result.as_dict()}))
    else:
        print(f"{args.checkpoint} (epoch {trained.epoch}), {result.images:,} {args.split} images, accuracy in %")
        print(format_table({args.split: result}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ltcl.engine.inference import load_trained_model, predict_images

    trained = load_trained_model(args.checkpoint, args.overrides, device=args.device)
    predictions = predict_images(trained, args.images, top_k=args.top_k, logit_adjust_tau=args.logit_adjust)
    for path, top in zip(args.images, predictions):
        print(path)
        for rank, (name, probability) in enumerate(top, 1):
            print(f"  {rank}. {name:<24} {100 * probability:6.2f}%")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from ltcl.data.build import build_data, describe, format_description

    cfg = load_config(args.config, args.overrides)
    info = describe(cfg, build_data(cfg))
    if args.json:
        print(json.dumps(info))
    else:
        print(format_description(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltcl",
        description="Long-tailed recognition with Aligned Contrastive Learning (ACL), SCL and Balanced Softmax.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a config; prints progress and the final Many/Medium/Few/All table",
                            description="Train one configured run. Writes config.yaml, metrics.csv, checkpoints "
                            "and report.md to train.output_dir/train.run_name.")
    _add_config_args(p)
    p.add_argument("--resume", metavar="PATH", help="continue a run from its checkpoint_last.pt (never automatic)")
    p.set_defaults(run=cmd_train)

    p = commands.add_parser("eval", help="evaluate a checkpoint on the val or test split",
                            description="Evaluate a checkpoint with its own config (data paths can be changed "
                            "with --set data.root=...).")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint_best.pt or checkpoint_last.pt")
    p.add_argument("--split", choices=["val", "test"], default="test", help="which split (default: test)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=cmd_eval)

    p = commands.add_parser("predict", help="top-k classes of image files",
                            description="Classify image files with a checkpoint; prints the top-k class names "
                            "and probabilities.")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to show (default 5)")
    p.add_argument("--logit-adjust", type=float, default=0.0, metavar="TAU",
                   help="post-hoc logit adjustment: subtract TAU * log(class prior) (useful for CE-trained models)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(run=cmd_predict)

    p = commands.add_parser("data", help="build a config's datasets and print sizes, counts and shot groups",
                            description="Build the training and test sets of a config and print what to know "
                            "before training: classes, sizes, head/tail counts, shot groups, views per group.")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_data)

    try:
        from ltcl.analysis.cli import register
    except ImportError:
        register = None
    if register is not None:
        register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (UserError, ConfigError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        message = str(err).strip() or type(err).__name__
        if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in message:
            message = f"{message}: {err.filename}"
        print(f"ltcl {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ltcl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
