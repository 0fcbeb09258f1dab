"""report.md and results.json of a finished run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ltcl.config import Config
from ltcl.data.build import DataBundle
from ltcl.engine.evaluate import EvalResult, format_cell, format_table
from ltcl.engine.records import code_revision


def write_report(run_dir: Path, cfg: Config, data: DataBundle, rows: dict[str, EvalResult],
                 test: EvalResult, timing: dict | None = None) -> None:
    """Writes the final table, the facts that define the run, per-class accuracy, and links to the plots."""
    results = {
        "name": cfg.name,
        "test": test.as_dict(),
        "rows": {name: r.as_dict() for name, r in rows.items()},
        "per_class_test": test.per_class,
        "class_counts": data.train_counts,
        "seed": cfg.train.seed,
        "code_revision": code_revision(),
        "timing": timing or {},
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    draw_plots(run_dir)

    lines = [
        f"# {cfg.name}",
        "",
        f"- dataset: {cfg.data.dataset}, {data.num_classes} classes, {sum(data.train_counts):,} training images "
        f"(imbalance {max(data.train_counts) / min(data.train_counts):.0f})",
        f"- objective: {cfg.loss.objective} (alpha {cfg.loss.alpha}, tau {cfg.loss.temperature}), "
        f"{cfg.views.num_views} views ({cfg.views.contrastive_mode}), backbone {cfg.model.backbone}",
        f"- schedule: {cfg.optim.epochs} epochs, batch {cfg.data.batch_size}, lr {cfg.optim.lr} ({cfg.optim.schedule})",
        f"- seed {cfg.train.seed}, code {results['code_revision']}; full config in `config.yaml`",
        "",
        "## Accuracy (%)",
        "",
        format_table(rows),
        "",
        f"Shot groups by training count: many > {cfg.data.many_threshold}, medium, few < {cfg.data.few_threshold}.",
        "",
    ]
    plots = sorted(p.name for p in run_dir.glob("*.png"))
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    if data.num_classes <= 100:
        lines += ["## Per-class test accuracy", "", "| class | name | train images | accuracy |",
                  "| ---: | --- | ---: | ---: |"]
        for j, (name, count) in enumerate(zip(data.class_names, data.train_counts)):
            lines.append(f"| {j} | {name} | {count} | {format_cell(test.per_class[j])} |")
        lines.append("")
    (run_dir / "report.md").write_text("\n".join(lines))


def draw_plots(run_dir: Path) -> None:
    """The run's PNG plots, before report.md links them; a plotting failure is a warning, never an error."""
    try:
        from ltcl.analysis.plots import make_run_plots

        make_run_plots(run_dir)
    except Exception as err:  # e.g. a broken matplotlib install must not fail a finished run
        print(f"warning: the plots of {run_dir} were not drawn ({type(err).__name__}: {err})",
              file=sys.stderr)
