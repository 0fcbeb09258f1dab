"""``ltcl eval``: the report of a checkpoint on one split, in one process or under torchrun.

Under torchrun every process scores a disjoint shard of each split it reads (:mod:`.gather`) and holds the whole
split afterwards; process 0 alone prints and writes. The report goes to stdout (a table, or one JSON object with
``--json``) and to a directory beside the checkpoint, ``eval_<split>_<name>/`` (``checkpoint_best.pt`` ->
``eval_test_best/``; ``eval_test_best_tta5/`` with ``--tta 5``, so that a report of averaged views never replaces a
single-view one), or ``--out``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ltcl.data.augment import build_test_transform
from ltcl.data.datasets import VAL_PER_CLASS_DATASETS, build_split
from ltcl.dist import barrier
from ltcl.engine.distributed import init_distributed, shutdown
from ltcl.engine.inference import TrainedModel, evaluation_split, load_trained_model, split_source
from ltcl.engine.recipe import loader_options, model_views
from ltcl.errors import UserError
from ltcl.evaluation.adjust import parse_logit_adjust
from ltcl.evaluation.gather import predict_dataset
from ltcl.evaluation.priors import parse_test_prior
from ltcl.evaluation.render import format_report, write_report
from ltcl.evaluation.report import EvalOptions, build_report
from ltcl.evaluation.tta import ViewAveraged, check_views, tta_views_config
from ltcl.methods import balanced_logits


def report_dir(checkpoint: str | Path, split: str, tta: int = 1) -> Path:
    """``eval_<split>_<name>`` beside the checkpoint, ``name`` its file name less ``checkpoint_``, and
    ``_tta<N>`` after it for N test-time views."""
    path = Path(checkpoint)
    suffix = f"_tta{tta}" if tta > 1 else ""
    return path.parent / f"eval_{split}_{path.stem.removeprefix('checkpoint_')}{suffix}"


def validation_hint(trained: TrainedModel) -> str:
    """How a run of this dataset gets a validation split, for the refusal to fit anything without one."""
    cfg = trained.cfg
    if cfg.data.dataset in VAL_PER_CLASS_DATASETS:  # drawn from the training pool: fixed when the run was trained
        return "it was trained with data.val_per_class=0 (train with N > 0 for one)"
    return split_source(cfg, "val")


class SplitOutputs:
    """The logits and labels of a split, each split scored once (None for a split the run does not have).

    With ``tta`` > 1 every split read (the validation split too, when something is fitted on it) is scored with the
    same test-time views: the loader gives the expanded images, :class:`.tta.ViewAveraged` crops and averages.
    """

    def __init__(self, trained: TrainedModel, evaluated: str, tta: int = 1) -> None:
        self.trained, self.evaluated, self.cache = trained, evaluated, {}
        views = model_views(trained.cfg)
        self.transform = build_test_transform(tta_views_config(views, tta))
        self.model = trained.model if tta == 1 else ViewAveraged(trained.model, views.test_size, tta)

    def __call__(self, split: str):
        if split not in self.cache:
            trained, cfg = self.trained, self.trained.cfg
            dataset = build_split(cfg.data, split, self.transform, class_names=trained.class_names)
            if dataset is None and split == self.evaluated:
                evaluation_split(trained, split)  # raises the one-sentence error of a missing split
            self.cache[split] = None
            if dataset is not None:
                self.cache[split] = predict_dataset(
                    self.model,
                    dataset,
                    trained.device,
                    batch_size=cfg.data.eval_batch_size,
                    amp=trained.amp,
                    channels_last=cfg.train.channels_last,
                    loader_options=loader_options(cfg, trained.device),
                )
        return self.cache[split]


def tta_entry(n: int) -> dict:
    """What the report says of its views: always present, so that a number is never read as the other kind."""
    if n == 1:
        return {"views": 1, "method": "single centre crop"}
    what = "the four corner crops and the centre crop" + (" of the image and of its mirror image" if n == 10 else "")
    return {"views": n, "method": f"{what} of the expanded image (LIFT's test-time ensemble), logits averaged"}


def options_from_args(args, trained: TrainedModel) -> EvalOptions:
    return EvalOptions(
        split=args.split,
        logit_adjust=parse_logit_adjust(args.logit_adjust),
        calibrate=args.calibrate,
        test_priors=parse_test_prior(args.test_prior) if args.test_prior else [],
        sweep=(args.test_prior or "").strip().lower() == "sweep",
        many=trained.cfg.data.many_threshold,
        few=trained.cfg.data.few_threshold,
        val_hint=validation_hint(trained),
        balanced_logits=balanced_logits(trained.cfg),
    )


def save(report: dict, out: Path, explicit: bool) -> None:
    """Writes the report's files into ``out`` and records them in ``report``; an unwritable default place is a
    warning (the printed report stands), an unwritable ``--out`` an error."""
    try:
        report["files"] = write_report(report, out)
        report["report_dir"] = str(out)
    except OSError as err:
        message = f"cannot write the report to {out} ({err.strerror or err}): give --out DIR"
        if explicit:
            raise UserError(f"{message[0].upper()}{message[1:]}.") from None
        print(f"ltcl eval: warning: {message}.", file=sys.stderr)


def run_eval(args) -> int:
    """``ltcl eval`` (see :func:`ltcl.cli.use.register` for its options)."""
    parse_logit_adjust(args.logit_adjust)  # a mistake is reported before anything loads
    tta = check_views(args.tta)
    if args.test_prior:
        parse_test_prior(args.test_prior)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    ctx = init_distributed(args.device) if distributed else None
    try:
        trained = load_trained_model(
            args.checkpoint, args.overrides, device=args.device, local_rank=ctx.local_rank if ctx else 0
        )
        options = options_from_args(args, trained)
        outputs = SplitOutputs(trained, args.split, tta)
        report = build_report(outputs, trained.class_counts, trained.class_names, options)
        barrier()  # every collective is done: no process leaves while another still gathers
        if ctx is not None and not ctx.is_main:
            return 0
        report = {"checkpoint": str(args.checkpoint), "epoch": trained.epoch, "tta": tta_entry(tta), **report}
        out = Path(args.out) if args.out else report_dir(args.checkpoint, args.split, tta)
        save(report, out, bool(args.out))
        print(json.dumps(report) if args.json else format_report(report))
        return 0
    finally:
        if ctx is not None:
            shutdown()
