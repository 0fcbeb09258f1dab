"""``ltcl data``: what a config's datasets hold, before training; ``--check`` opens every image once."""

from __future__ import annotations

import argparse
import json
import sys

from ltcl.cli.common import USER_MISTAKE, add_set_option


def cmd_data(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ltcl.config import load_config
    from ltcl.data.build import build_data, describe, format_description
    from ltcl.data.datasets import LEFT_OUT, check_images
    from ltcl.engine.recipe import model_views

    cfg = load_config(args.config, args.overrides)
    bundle = build_data(cfg, views=model_views(cfg))
    info = describe(cfg, bundle)
    problems = []
    if args.check:
        for split, dataset in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test)):
            if dataset is None:
                continue
            with tqdm(total=len(dataset), desc=f"checking {split}", disable=not sys.stderr.isatty()) as bar:
                problems += [(split, *p) for p in check_images(dataset, progress=bar.update)]
        info["problems"] = [{"split": s, "image": where, "reason": why} for s, where, why in problems]
    left_out = [p for p in problems if p[2].endswith(LEFT_OUT)]  # data.skip_corrupt dropped them: a note only
    problems = [p for p in problems if not p[2].endswith(LEFT_OUT)]
    print(json.dumps(info) if args.json else format_description(info))
    if left_out and not args.json:
        print(f"note: {len(left_out)} unreadable image(s) are left out (data.skip_corrupt):")
        for split, where, why in left_out:
            print(f"  {split}: {where}: {why.removesuffix(LEFT_OUT)}")
    if problems:
        if not args.json:
            for split, where, why in problems:
                print(f"  {split}: {where}: {why}")
        print(
            f"ltcl data: error: {len(problems)} image(s) are missing or unreadable (listed above); fix them or set "
            "data.skip_corrupt=true to leave them out.",
            file=sys.stderr,
        )
        return USER_MISTAKE
    if args.check and not args.json:
        print("every image opened and decoded")
    return 0


def register(commands) -> None:
    p = commands.add_parser(
        "data",
        help="build a config's datasets and print sizes, counts and shot groups",
        description="Build the training, validation and test sets of a config and print what "
        "to know before training: classes, sizes, head/tail counts, shot groups, views per "
        "group. Missing image files are reported at once; --check also decodes every image.",
    )
    p.add_argument("-c", "--config", required=True, help="YAML config file (see configs/)")
    add_set_option(p)
    p.add_argument("--check", action="store_true", help="open and decode every image of every split once")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_data)
