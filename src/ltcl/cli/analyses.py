"""Commands of the paper's analyses: ``ltcl analyze conflicts | tsne``, ``ltcl sweep``, ``ltcl compare``.

``ltcl.cli`` calls :func:`register` with its subparsers; each command sets ``args.run = function(args)``,
which returns the exit status.
User mistakes raise ValueError / FileNotFoundError with one sentence (the main CLI prints it, exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ltcl.cli.common import add_device_option, add_set_option
from ltcl.errors import UserError

ANALYZE_EPILOG = """examples:
  ltcl analyze conflicts runs/scl runs/acl --out fig4a.png
  ltcl analyze tsne --checkpoint runs/acl/checkpoint_last.pt --classes many:5,few:5
  ltcl analyze tsne --checkpoint runs/acl/checkpoint_last.pt --classes 0,3,7 --max-per-class 200
"""

SWEEP_EPILOG = """examples:
  ltcl sweep -c configs/digits_lt.yaml --grid loss.alpha=0.05,0.1,0.5 --seeds 3
  ltcl sweep -c configs/digits_lt.yaml --grid loss.objective=bs,bs+scl,bs+acl --set optim.epochs=10
  ltcl sweep -c configs/imagenet_lt_x50_acl.yaml --grid loss.alpha=0.1,0.5,1.0 --print-commands \\
      --nproc-per-node 8 > jobs.sh
List values are bracketed: --grid views.sizes=[32,32,24,24],[32,32,32,32].
Run the same command again to resume: finished runs are skipped, killed runs resume from checkpoint_last.pt.
"""


COMPARE_EPILOG = """examples:
  ltcl compare runs/sweep_digits_lt/* --baseline loss.objective=bs
  ltcl compare runs/acl_s0 runs/acl_s1 runs/scl_s0 runs/scl_s1 --baseline runs/scl_s0 --out tables/acl.md
  ltcl compare --csv benchmarks/results/cifar10_lt_ablation.csv --epochs 20 --baseline bs_acl
"""


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions to the terminal but keeps the examples of an epilog line by line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def default_conflicts_out(runs, all_epochs: bool) -> Path:
    """``analysis_conflicts[_with_<other runs>][_all_epochs].png`` in the first run's directory: a name no run
    writes, so that a run's own conflicts.png (its last epoch, drawn by ltcl train) is never replaced."""
    from ltcl.analysis.sweep import safe_name

    parts = ["analysis_conflicts"]
    others = "+".join(safe_name(run.path.name) for run in runs[1:])
    if others:
        parts.append(f"with_{others}" if len(others) <= 60 else f"with_{len(runs) - 1}_runs")
    if all_epochs:
        parts.append("all_epochs")
    return runs[0] / ("_".join(parts) + ".png")


def cmd_conflicts(args: argparse.Namespace) -> int:
    from ltcl.analysis.conflicts import group_means
    from ltcl.analysis.plots import plot_conflicts
    from ltcl.analysis.run_plots import conflict_series
    from ltcl.data.longtail import ACCURACY_COLUMNS
    from ltcl.engine.rundir import RunDir

    runs = [RunDir(p) for p in args.run_dirs]
    for run in runs:
        run.exists()
    columns = [c.capitalize() for c in ACCURACY_COLUMNS]
    lines = [f"| run | epochs | {' | '.join(columns)} |", "| --- | --- |" + " ---: |" * len(columns)]
    series = []
    for run in runs:
        one = conflict_series(run.path, all_epochs=args.all_epochs)
        means = group_means(one.ratios, one.counts, *run.thresholds())
        cells = " | ".join("n/a" if means[c] is None else f"{means[c]:.3f}" for c in ACCURACY_COLUMNS)
        lines.append(f"| {one.label} | {one.epochs} | {cells} |")
        series.append(one)
    out = Path(args.out) if args.out else default_conflicts_out(runs, args.all_epochs)
    many, few = runs[0].thresholds()  # the count axis marks the first run's shot groups
    plot_conflicts(series, out, many=many, few=few, all_epochs=args.all_epochs)
    print("SCL gradient-conflict ratio (conflicting / positive pairs), mean over the classes of each group:")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


def cmd_tsne(args: argparse.Namespace) -> int:
    from ltcl.analysis.embeddings import collect_embeddings, select_classes, tsne_2d
    from ltcl.analysis.paper_plots import plot_tsne
    from ltcl.data.longtail import shot_groups
    from ltcl.engine.inference import load_trained_model

    if args.max_per_class < 0:
        raise UserError(f"--max-per-class must be 0 (all images) or a positive number, got {args.max_per_class}.")
    trained = load_trained_model(args.checkpoint, args.overrides, device=args.device)
    data = trained.cfg.data
    counts = trained.class_counts
    classes, notes = select_classes(
        args.classes, counts, many=data.many_threshold, few=data.few_threshold, seed=args.seed
    )
    for note in notes:
        print(f"note: {note}")
    emb = collect_embeddings(trained, classes, split=args.split, max_per_class=args.max_per_class, seed=args.seed)
    empty = [c for c in classes if not (emb.labels == c).any()]
    if empty:
        missing = ", ".join(trained.class_names[c] for c in empty)
        print(f"note: the {args.split} split has no image of {missing}; left out of the figure.")
    classes = [c for c in classes if c not in empty]
    points = tsne_2d(emb.vectors, seed=args.seed)
    groups = shot_groups(counts, many=data.many_threshold, few=data.few_threshold).tolist()
    what = (
        "L2-normalised projections"
        if emb.kind == "projection"
        else "L2-normalised backbone features (the model has no projection head)"
    )
    run_name = Path(args.checkpoint).resolve().parent.name
    title = f"t-SNE of {what}\n{run_name}, {args.split} split, {len(points)} images of {len(classes)} classes"
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"tsne_{args.split}.png"
    plot_tsne(points, emb.labels, classes, trained.class_names, counts, groups, out, title)
    names = ", ".join(f"{trained.class_names[c]} ({counts[c]})" for c in classes)
    print(f"classes (training images): {names}")
    print(f"wrote {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ltcl.analysis import sweep
    from ltcl.analysis.tables import LAST_EPOCH_NOTE, results_table

    if args.nproc_per_node is not None and not args.print_commands:
        raise UserError("--nproc-per-node only applies with --print-commands (the sweep itself runs in one process).")
    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        raise UserError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}.")
    axes = sweep.parse_grid(args.grid)
    out = Path(args.out or f"runs/sweep_{Path(args.config).stem}")
    runs = sweep.plan_sweep(axes, args.seeds, args.overrides, out)
    sweep.check_runs(args.config, runs)
    if args.print_commands:
        print("\n".join(sweep.sweep_commands(args.config, runs, out, args.nproc_per_node or 1)))
        return 0
    rows = sweep.run_sweep(args.config, axes, runs, out, args.overrides)
    print(f"\nSweep of {args.config}: {LAST_EPOCH_NOTE[0].lower()}{LAST_EPOCH_NOTE[1:]}, mean ± std over seeds")
    print(results_table(rows))
    print(f"wrote {out / 'sweep.md'} and {out / 'sweep.csv'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ltcl.analysis import leaderboard as board
    from ltcl.analysis import leaderboard_format as board_format
    from ltcl.analysis import leaderboard_rows as board_rows
    from ltcl.analysis.tables import EVAL_REPORTS, LAST_EPOCH_NOTE, group_runs, run_measurements

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
    """Adds ``analyze``, ``sweep`` and ``compare`` to the ``ltcl`` subparsers."""
    formatter = _HelpFormatter
    p = commands.add_parser(
        "analyze",
        help="analyses of trained runs: conflicts (Fig. 4a), tsne (Fig. 5)",
        description="The paper's analyses of trained runs.",
        epilog=ANALYZE_EPILOG,
        formatter_class=formatter,
    )
    analyses = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")

    a = analyses.add_parser(
        "conflicts",
        help="per-class SCL conflict ratio vs class frequency (Fig. 4a)",
        description="Plot the per-class gradient-conflict ratio (conflicting / "
        "positive SCL pairs, Eq. 7) against each class's training count, for one or more "
        "runs on one figure, and print the mean ratio of each shot group. The runs must "
        "have been trained with --set train.monitor_conflicts=true.",
    )
    a.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories holding conflicts.csv")
    a.add_argument(
        "--out",
        metavar="FILE.png",
        help="where to write the figure (default: analysis_conflicts[_with_<runs>][_all_epochs].png in the first "
        "run's directory, never the run's own conflicts.png)",
    )
    a.add_argument(
        "--all-epochs",
        action="store_true",
        help="pool the pair counts of every epoch instead of using the last epoch only",
    )
    a.set_defaults(run=cmd_conflicts)

    a = analyses.add_parser(
        "tsne",
        help="t-SNE of the learned projections of chosen classes (Fig. 5)",
        description="Embed the images of chosen classes with a checkpoint "
        "(unit-norm projections, or backbone features when the model has no projection "
        "head), run t-SNE and plot them: many-shot classes in saturated colours, "
        "few-shot ones lighter.",
    )
    a.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="checkpoint_last.pt or checkpoint_best.pt of a run"
    )
    a.add_argument(
        "--classes",
        default="many:5,few:5",
        metavar="SPEC",
        help="random classes per shot group, e.g. many:5,medium:3,few:5 (seeded), or class "
        "indices such as 0,3,7 (default: many:5,few:5)",
    )
    a.add_argument("--split", choices=["val", "test"], default="test", help="which images (default: test)")
    a.add_argument(
        "--out", metavar="FILE.png", help="where to write the figure (default: tsne_<split>.png beside the checkpoint)"
    )
    a.add_argument("--seed", type=int, default=0, help="seed of the class and image choice and of t-SNE (default 0)")
    a.add_argument(
        "--max-per-class", type=int, default=0, metavar="N", help="at most N random images per class (default 0: all)"
    )
    add_set_option(
        a,
        "the checkpoint's config that leaves its model unchanged (data.root when the data moved, "
        "data.few_threshold, loader settings)",
        example="--set data.few_threshold=10",
    )
    add_device_option(a)
    a.set_defaults(run=cmd_tsne)

    p = commands.add_parser(
        "sweep",
        help="train a grid of settings times seeds and tabulate mean ± std",
        description="Train every combination of --grid values (cartesian product) for "
        "seeds 0..N-1, one run directory each under --out, then write sweep.md, "
        "sweep.csv and plots of top-1 accuracy per setting (Fig. 4b) and against a "
        "numeric key (Fig. 4c).",
        epilog=SWEEP_EPILOG,
        formatter_class=formatter,
    )
    p.add_argument("-c", "--config", required=True, help="YAML config file (see configs/)")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a config key and the values to try (repeatable; values are checked like --set)",
    )
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="train seeds 0..N-1 of every setting (default 1)")
    add_set_option(p, "the config for every run")
    p.add_argument(
        "--out", metavar="DIR", help="output directory of the runs and tables (default: runs/sweep_<config name>)"
    )
    p.add_argument(
        "--print-commands",
        action="store_true",
        help="print one torchrun command per run (shell-quoted) and run nothing",
    )
    p.add_argument(
        "--nproc-per-node",
        type=int,
        metavar="G",
        help="processes per torchrun command (with --print-commands; default 1)",
    )
    p.set_defaults(run=cmd_sweep)

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
