"""The end of a run: the final evaluation, the printed table, results.json and report.md.

The test split is evaluated here only, never during training when a validation split exists: once for the last
epoch's model and once for the model that was best on the validation split (the selection never sees the test).
Plots are drawn by the command line after the run (the engine does not import the analyses).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ltcl import __version__
from ltcl.config import Config
from ltcl.data.build import DataBundle
from ltcl.dist import barrier
from ltcl.engine.checkpoint import load_checkpoint
from ltcl.engine.evaluate import EvalResult, evaluate_run, evaluated_weights, format_cell, format_table
from ltcl.engine.rundir import RunDir
from ltcl.engine.state import TrainState


def code_revision() -> str:
    """The git commit of the ltcl source (with ``-dirty`` for uncommitted changes), or ``unknown``."""
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return f"unknown (ltcl {__version__})"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return f"unknown (ltcl {__version__})"


def final_report(
    state: TrainState,
    data: DataBundle,
    run_dir: RunDir,
    val_loader,
    test_loader,
    last_eval: tuple[str, EvalResult] | None,
    timing: dict,
    started: float,
) -> tuple[EvalResult | None, EvalResult | None, int | None]:
    """Evaluates the final models, prints the table and the time taken, and writes results.json and report.md
    (rank 0).

    Args:
        timing: ``epochs_run`` and ``train_seconds`` of this session; the wall time (``time.perf_counter()`` since
            ``started``, start-up and the final evaluation included) is added here.

    Returns:
        (last-epoch test result or None without a test split, best-on-validation result on val or None, its epoch).
    """
    cfg = state.cfg
    epochs = cfg.optim.epochs

    def run_eval(loader) -> EvalResult:
        with evaluated_weights(state):  # the moving average when train.ema_decay is on
            return evaluate_run(cfg, state.model, loader, data.train_counts, state.ctx.device, state.amp)

    rows: dict[str, EvalResult] = {}
    last_val = None
    if val_loader is not None:
        last_val = last_eval[1] if last_eval and last_eval[0] == "val" else run_eval(val_loader)
        rows[f"val (last epoch, {epochs})"] = last_val
    test = None
    if test_loader is not None:
        test = last_eval[1] if last_eval and last_eval[0] == "test" else run_eval(test_loader)
    if test is not None:
        rows[f"test (last epoch, {epochs})"] = test
    best_val = best_test = None
    best_epoch = state.best["epoch"] if state.best else None
    if best_epoch is not None and val_loader is not None:
        if best_epoch == state.epoch:
            # The best checkpoint was saved from the weights in memory: evaluating it would repeat these numbers.
            best_val, best_test = last_val, test
        else:
            barrier()  # rank 0 wrote the file; every rank reads it (multi-node runs need a shared train.output_dir)
            best = load_checkpoint(run_dir.best_checkpoint)
            state.model.load_state_dict(best["model"])
            if state.ema is not None:
                state.ema.load_state_dict(best["ema"])
            best_val = run_eval(val_loader)
            best_test = None if test_loader is None else run_eval(test_loader)
        rows[f"val (best on val, epoch {best_epoch})"] = best_val
        if best_test is not None:
            rows[f"test (best on val, epoch {best_epoch})"] = best_test
    timing = {**timing, "wall_seconds": time.perf_counter() - started}
    if state.ctx.is_main:
        print(
            f"\nFinal accuracy (%), shot groups by training count: many > {cfg.data.many_threshold}, "
            f"few < {cfg.data.few_threshold}\n{format_table(rows)}"
        )
        full_report = full_report_command(run_dir, best_epoch, "test" if test_loader is not None else "val")
        print(f"per class, calibration and shifted priors: {full_report}")
        print(timing_line(timing))
        results = results_document(
            cfg, rows, test, best_test, best_val, best_epoch, data.train_counts, timing, code_revision()
        )
        run_dir.write_results(results)
        objective = state.objective.describe()
        run_dir.write_report(report_text(cfg, data, rows, test, results["code_revision"], objective, full_report))
    return test, best_val, best_epoch


def results_document(
    cfg: Config, rows: dict, test, best_test, best_val, best_epoch, class_counts, timing: dict, revision: str
) -> dict:
    """What ``results.json`` holds for a finished run (a training run or a re-fit): the test numbers of the last
    and the best-on-validation model, every table row, per-class test accuracy, and what produced them."""
    return {
        "name": cfg.name,
        "test": None if test is None else test.as_dict(),
        "test_best_val": None if best_test is None else best_test.as_dict(),
        "val_best": None if best_val is None else best_val.as_dict(),
        "best_epoch": best_epoch,
        "rows": {name: r.as_dict() for name, r in rows.items()},
        "per_class_test": None if test is None else test.per_class,
        "class_counts": class_counts,
        "seed": cfg.train.seed,
        "code_revision": revision,
        "command": " ".join(sys.argv),
        "timing": timing,
    }


def full_report_command(run_dir: RunDir, best_epoch: int | None, split: str) -> str:
    """The command of the run's full report (``ltcl eval``), on the best-on-validation checkpoint when there is one."""
    checkpoint = run_dir.last_checkpoint if best_epoch is None else run_dir.best_checkpoint
    return f"ltcl eval --checkpoint {checkpoint} --split {split}"


def timing_line(timing: dict) -> str:
    """This session's time: the epochs it trained, and the wall time from start-up to the final table."""
    epochs, seconds = timing["epochs_run"], timing["train_seconds"]
    trained = f"trained {epochs} epoch(s) in {seconds:.1f} s ({seconds / epochs:.1f} s per epoch)" if epochs else ""
    wall = f"{timing['wall_seconds']:.1f} s wall from start-up to this table (data, model, evaluation included)"
    return f"{trained}; {wall}" if trained else wall


def report_text(
    cfg,
    data: DataBundle,
    rows: dict[str, EvalResult],
    test: EvalResult | None,
    revision: str,
    objective: str,
    full_report: str = "",
) -> str:
    """report.md: the facts that define the run (``objective``: what the header says of it), the final table, the
    command of the full report (``full_report``, :func:`full_report_command`) and the per-class test accuracy."""
    counts = data.train_counts
    lines = [
        f"# {cfg.name}",
        "",
        f"- dataset: {cfg.data.dataset}, {data.num_classes} classes, {sum(counts):,} training images "
        f"(imbalance {max(counts) / min(counts):.0f})",
        f"- objective: {objective}, "
        f"{cfg.views.num_views} views ({cfg.views.contrastive_mode}), backbone {cfg.model.backbone}",
        f"- schedule: {cfg.optim.epochs} epochs, batch {cfg.data.batch_size}, lr {cfg.optim.lr} ({cfg.optim.schedule})",
        f"- seed {cfg.train.seed}, code {revision}; full config in `config.yaml`",
        "",
        "## Accuracy (%)",
        "",
        format_table(rows),
        "",
        f"Shot groups by training count: many > {cfg.data.many_threshold}, medium, few < {cfg.data.few_threshold}.",
        "",
    ]
    if full_report:
        lines += [f"Per class, calibration and shifted priors: `{full_report}`", ""]
    if test is not None and data.num_classes <= 100:
        lines += [
            "## Per-class test accuracy",
            "",
            "| class | name | train images | accuracy |",
            "| ---: | --- | ---: | ---: |",
        ]
        for j, (name, count) in enumerate(zip(data.class_names, counts)):
            lines.append(f"| {j} | {name} | {count} | {format_cell(test.per_class[j])} |")
        lines.append("")
    return "\n".join(lines)
