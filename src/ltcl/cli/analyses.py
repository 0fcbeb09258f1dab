"""Commands of the paper's analyses: ``ltcl analyze conflicts | tsne``, ``ltcl sweep`` (``ltcl compare`` is in
:mod:`ltcl.cli.compare`).

``ltcl.cli`` calls :func:`register` with its subparsers; each command sets ``args.run = function(args)``,
which returns the exit status.
User mistakes raise ValueError / FileNotFoundError with one sentence (the main CLI prints it, exit status 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ltcl.cli.common import _HelpFormatter, add_device_option, add_set_option
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


def register(commands) -> None:
    """Adds ``analyze`` and ``sweep`` to the ``ltcl`` subparsers."""
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
