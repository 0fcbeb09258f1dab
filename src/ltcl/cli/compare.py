"""``ltcl compare``: the leaderboard of finished runs (grouped by their resolved configs) or of a results csv, mean
± std over seeds and, with ``--baseline``, paired differences (:mod:`ltcl.analysis.leaderboard`).

``ltcl.cli`` calls :func:`register` with its subparsers; the command sets ``args.run = cmd_compare``, which returns
the exit status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ltcl.cli.common import _HelpFormatter
from ltcl.errors import UserError

COMPARE_EPILOG = """examples:
  ltcl compare runs/sweep_digits_lt/* --baseline loss.objective=bs
  ltcl compare runs/acl_s0 runs/acl_s1 runs/scl_s0 runs/scl_s1 --baseline runs/scl_s0 --out tables/acl.md
  ltcl compare --csv benchmarks/results/cifar10_lt_ablation.csv --epochs 20 --baseline bs_acl
"""


def cmd_compare(args: argparse.Namespace) -> int:
    from ltcl.analysis import leaderboard as board
    from ltcl.analysis import leaderboard_format as board_format
    from ltcl.analysis import leaderboard_rows as board_rows
    from ltcl.analysis.eval_ece import EVAL_REPORTS
    from ltcl.analysis.tables import LAST_EPOCH_NOTE, group_runs, run_measurements

    if args.csv and args.run_dirs:
        raise UserError("Give run directories or --csv FILE, not both.")
    if not args.csv and not args.run_dirs:
        raise UserError("Give the run directories to compare, or a results csv with --csv FILE.")
    notes = []
    if args.csv:
        measurements = board_rows.read_results_csv(args.csv)
        what = (
            f"Test accuracy in % of the last-epoch model ({args.csv}: many, medium, few, all; All, best-on-val "
            "checkpoint: val_best_all)"
        )
    else:
        finished, notes = _finished_runs(args.run_dirs, args.epochs)
        measurements = run_measurements(group_runs(finished))  # a missing directory fails here, named
        what = LAST_EPOCH_NOTE
    if args.epochs is not None:
        measurements = board.keep_epochs(measurements, args.epochs, args.csv or "these directories")
    settings = board.build_settings(measurements)
    untested = [d for s in settings for d in s.untested]
    if untested:
        notes.insert(0, f"no test split (n/a, no number in the means): {', '.join(untested)}")
    if board_format.ece_columns(settings):
        where = " or ".join(str(p) for p in EVAL_REPORTS)
        notes.append(
            f"ECE: expected calibration error in % of the model's test outputs (before any temperature scaling), from "
            f"each run's {where} (ltcl eval); n/a for a run without one"
        )
        adjusted = [f"{m.source} (tau {m.logit_adjust_tau:g})" for m in measurements if m.logit_adjust_tau]
        if adjusted:
            notes.append(f"ECE of logit-adjusted outputs (ltcl eval --logit-adjust): {', '.join(adjusted)}")
    diffs = []
    header = f"{what}; {board_format.SETTINGS_NOTE}:"
    table = board_format.settings_table(settings)
    differences = ""
    if args.baseline:
        diffs, unpaired = board.baseline_differences(settings, args.baseline)
        notes += unpaired
        differences = f"Each setting minus the baseline ({args.baseline}): {board_format.DIFFERENCES_NOTE}:"
        differences += "\n\n" + board_format.differences_table(diffs, settings) if diffs else "\n\nnone to pair."
    print(header)
    print(table)
    if differences:
        print("\n" + differences)
    for note in notes:
        print(note)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        runs = "\n".join(f"- {s.label}: {', '.join(s.sources)}" for s in settings)
        runs += "".join(f"\n- {note}" for note in notes)
        text = f"# Comparison\n\n{header}\n\n{table}\n\n"
        if differences:
            text += f"## Paired differences\n\n{differences}\n\n"
        out.write_text(text + f"Runs:\n\n{runs}\n")
        board_format.write_settings_csv(settings, out.with_suffix(".csv"))
        written = [out, out.with_suffix(".csv")]
        if args.baseline:
            written.append(out.with_name(f"{out.stem}_differences.csv"))
            board_format.write_differences_csv(diffs, written[-1])
        print(f"wrote {', '.join(map(str, written))}")
    return 0


def _finished_runs(run_dirs: list[str], epochs: int | None) -> tuple[list[Path], list[str]]:
    """The finished runs among the paths of a shell glob (with ``epochs``: those that trained that many), and notes
    on the unfinished ones; paths that are no run are named on stderr.

    Raises:
        UserError: no path is a finished run.
    """
    from ltcl.analysis.tables import run_epochs, sort_run_paths
    from ltcl.engine.rundir import RunDir

    # A shell glob such as runs/* also matches a sweep's own sweep.csv and sweep.md, and runs still training.
    paths = sort_run_paths(run_dirs)
    for path in paths.skipped:
        print(f"skipping {path}: not a run directory", file=sys.stderr)
    if not paths.finished:
        if paths.unfinished:
            raise UserError(
                f"No run has finished yet among {', '.join(map(str, paths.unfinished))}: none holds {RunDir.RESULTS}."
            )
        raise UserError(f"None of {', '.join(run_dirs)} is a run directory; give the directories of finished runs.")
    finished = paths.finished
    if epochs is not None:
        trained = {p: run_epochs(p) for p in finished}
        finished = [p for p in finished if trained[p] == epochs]
        if not finished:
            there = ", ".join(str(e) for e in sorted({e for e in trained.values() if e is not None}))
            raise UserError(f"No run of these directories trained {epochs} epochs (the runs there trained {there}).")
    notes = []
    if paths.unfinished:
        notes.append(f"unfinished (no {RunDir.RESULTS} yet, left out): {', '.join(map(str, paths.unfinished))}")
    return finished, notes


def register(commands) -> None:
    """Adds ``compare`` to the ``ltcl`` subparsers."""
    formatter = _HelpFormatter
    p = commands.add_parser(
        "compare",
        help="leaderboard of finished runs or of a results csv: mean ± std over seeds, paired differences",
        description="Group finished runs whose resolved configs differ only in "
        "train.seed, train.run_name and train.output_dir (an extended run counts with the "
        "epochs it trained), or the rows of a results csv by setting and epochs, and print the last-epoch "
        "model's Many / Medium / Few / All test accuracy, the best-on-validation checkpoint's All, the ECE of "
        "the runs' eval reports (ltcl eval) and the seconds per epoch, as mean ± sample std over the distinct "
        "seeds of each setting. With --baseline, every setting minus the baseline, paired by seed, with a 95%% "
        "confidence interval (paired t). Rows are labelled by the config values that differ (a csv: by its "
        "label column). Unfinished runs are listed, not tabulated.",
        epilog=COMPARE_EPILOG,
        formatter_class=formatter,
    )
    p.add_argument(
        "run_dirs",
        nargs="*",
        metavar="RUN_DIR",
        help="run directories holding results.json (files among them, such as a sweep's sweep.csv, are skipped; "
        "unfinished runs are listed below the table)",
    )
    p.add_argument(
        "--csv",
        metavar="FILE",
        help="tabulate a results csv instead (columns setting, seed, epochs, many, medium, few, all; optional "
        "label, val_best_all, seconds_per_epoch, ece_all ...), e.g. benchmarks/results/cifar10_lt_ablation.csv",
    )
    p.add_argument("--epochs", type=int, metavar="N", help="only the runs that trained N epochs")
    p.add_argument(
        "--baseline",
        metavar="SETTING",
        help="also print each setting minus this one, paired by seed: a row label, a csv setting name, or one of "
        "the baseline's run directories",
    )
    p.add_argument(
        "--out",
        metavar="FILE.md",
        help="also write the tables as Markdown, the settings as CSV next to it (FILE.csv) and, with --baseline, "
        "the differences (FILE_differences.csv)",
    )
    p.set_defaults(run=cmd_compare)
