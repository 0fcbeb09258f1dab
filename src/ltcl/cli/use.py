"""``ltcl eval`` and ``ltcl predict``: a trained checkpoint on a split or on image files, from any directory."""

from __future__ import annotations

import argparse
import json
import sys

from ltcl.cli.common import USER_MISTAKE, add_device_option, add_set_option


def cmd_eval(args: argparse.Namespace) -> int:
    from ltcl.evaluation.command import run_eval

    return run_eval(args)


def cmd_predict(args: argparse.Namespace) -> int:
    from ltcl.engine.inference import collect_images, load_trained_model, predict_images

    trained = load_trained_model(args.checkpoint, args.overrides, device=args.device)
    failures = 0
    for path, top, problem in predict_images(
        trained,
        collect_images(args.images),
        top_k=args.top_k,
        logit_adjust_tau=args.logit_adjust,
        batch_size=args.batch_size,
    ):
        failures += problem is not None
        if args.json:
            entry = {"path": str(path)}
            entry |= {"error": problem} if problem else {"top": [{"class": n, "probability": p} for n, p in top]}
            print(json.dumps(entry), flush=True)
        elif problem:  # on stderr, so that stdout holds the predictions alone
            print(f"{path}: error: {problem}", file=sys.stderr)
        else:
            print(path)
            for rank, (name, probability) in enumerate(top, 1):
                print(f"  {rank}. {name:<24} {100 * probability:6.2f}%")
    if failures:
        print(f"ltcl predict: error: {failures} image(s) could not be read (named above).", file=sys.stderr)
        return USER_MISTAKE
    return 0


def register(commands) -> None:
    p = commands.add_parser(
        "eval",
        help="evaluate a checkpoint on the val or test split",
        description="Evaluate a checkpoint with its own config: top-1 and top-5, Many / Medium / Few, per-class "
        "accuracy, precision and recall, the confusion matrix, NLL and expected calibration error (15 bins, overall "
        "and per shot group). The report is printed and written beside the checkpoint (eval_SPLIT_NAME/: "
        "report.json, per_class.csv, confusion.csv, figures). Only the evaluated split is read, and the validation "
        "split when something is fitted on it (never on test); data that moved is found with --set data.root=... "
        "(or the split list keys). Under torchrun every image is scored once.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint_best.pt or checkpoint_last.pt")
    p.add_argument("--split", choices=["val", "test"], default="test", help="which split (default: test)")
    add_set_option(
        p,
        "the checkpoint's config (data paths, loader settings, shot-group thresholds)",
        example="--set data.root=/new/place/of/the/data",
    )
    add_device_option(p)
    p.add_argument(
        "--logit-adjust",
        metavar="TAU|auto",
        help="post-hoc logit adjustment: subtract TAU * log(training prior) from the logits before the "
        "prediction, as predict --logit-adjust (useful for CE-trained models); auto: the TAU of 0, 0.1, ..., 2 "
        "with the best balanced accuracy on the validation split (default: none)",
    )
    p.add_argument(
        "--calibrate",
        choices=["temperature"],
        help="temperature scaling: divide the logits by the T that minimises the NLL on the validation split; "
        "reports ECE and NLL before and after",
    )
    p.add_argument(
        "--test-prior",
        metavar="PRIOR",
        help="also evaluate on the split subsampled to a shifted label distribution (SADE's test-agnostic "
        "protocol), as evaluated and told the test prior: uniform, forward:R or backward:R (imbalance ratio R, "
        "forward: the training order), or sweep (R = 50, 25, 10, 5, 2 both ways, a table and a plot; ratios the "
        "split is too small for are left out and named)",
    )
    p.add_argument(
        "--tta",
        type=int,
        default=1,
        metavar="N",
        help="test-time augmentation as LIFT's test-time ensemble: 5 (the four corner crops and the centre crop of "
        "the image resized 24/224 larger than the model's input) or 10 (those and their mirror images), logits "
        "averaged; the report records N and goes to eval_SPLIT_NAME_ttaN/ (default: 1, one centre crop)",
    )
    p.add_argument("--out", metavar="DIR", help="where to write the report (default: eval_SPLIT_NAME/ beside it)")
    p.add_argument("--json", action="store_true", help="print the whole report as one JSON object instead of a table")
    p.set_defaults(run=cmd_eval)

    p = commands.add_parser(
        "predict",
        help="top-k classes of image files, folders or glob patterns",
        description="Classify images with a checkpoint: the shorter side is resized and the "
        "centre cropped as in evaluation. An unreadable file is reported and skipped; the "
        "exit status is then 2.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files, folders (searched recursively) or quoted glob patterns such as 'photos/*.jpg'",
    )
    p.add_argument("--top-k", type=int, default=5, help="how many classes to show (default 5)")
    p.add_argument(
        "--logit-adjust",
        type=float,
        default=0.0,
        metavar="TAU",
        help="post-hoc logit adjustment: subtract TAU * log(class prior) (useful for CE-trained models)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=0,
        metavar="N",
        help="images per forward pass (default: the config's data.eval_batch_size)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per image (path, top or error)")
    add_set_option(p, "the checkpoint's config", example="--set data.eval_batch_size=64")
    add_device_option(p)
    p.set_defaults(run=cmd_predict)
