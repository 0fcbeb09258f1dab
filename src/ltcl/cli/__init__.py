"""The ``ltcl`` command line: train, eval, predict, data, methods, analyze, sweep, compare, decouple.

Each command lives in its own module and registers its parser here; :mod:`.common` turns failures into one
sentence and an exit status.
"""

from __future__ import annotations

import argparse

from ltcl import __version__
from ltcl.cli import analyses, compare, data, decouple, methods, train, use
from ltcl.cli.common import run_command

EPILOG = """examples:
  ltcl data  -c configs/cifar10_lt_if100_acl.yaml --set data.root=../shared/data/cifar10_jpeg.npz --check
  ltcl train -c configs/digits_lt.yaml --set optim.epochs=5 --set loss.objective=bs
  ltcl train --resume runs/digits_lt/checkpoint_last.pt
  torchrun --nproc-per-node 4 -m ltcl.cli train -c configs/imagenet_lt_x50_acl.yaml
  ltcl eval    --checkpoint runs/digits_lt/checkpoint_last.pt --split test
  ltcl predict --checkpoint runs/digits_lt/checkpoint_last.pt photos/ 'more/*.jpg' --json
  ltcl methods                     # every method, backbone family and fine-tuning mode
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltcl",
        description="Long-tailed recognition with Aligned Contrastive Learning (ACL), SCL and Balanced Softmax.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ltcl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (train, use, data, methods, analyses, compare, decouple):
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))
