"""The paper's Table 5/6 ablation at small scale: CIFAR-10-LT IF100, ResNet-32, one short schedule for all.

Settings (each a normal ``ltcl train`` run of configs/cifar10_lt_if100_acl.yaml with overrides):
CE 1 view; BS 1 view; BS 4 views; BS 4 views + SCL (uniform views); + SCL (distribution-aware); + ACL.

Resumable: a finished setting (results.json) is skipped, an interrupted one continues from checkpoint_last.pt
(saved every ``--checkpoint-every`` steps). The table goes to <out>/table.md; the exact commands to
<out>/commands.sh.

    python benchmarks/cifar10_ablation.py --data ../shared/data/cifar10_jpeg.npz --epochs 8
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ONE_VIEW = ["views.num_views=1", "views.presets=cifar_autoaugment_cutout"]
SETTINGS = [  # (row label, run name, overrides)
    ("CE, 1 view", "ce_1view", ["loss.objective=ce", *ONE_VIEW]),
    ("BS, 1 view", "bs_1view", ["loss.objective=bs", *ONE_VIEW]),
    ("BS, 4 views", "bs_4views", ["loss.objective=bs"]),
    ("BS 4 views + SCL (uniform views)", "bs_scl_uniform", ["loss.objective=bs+scl", "views.contrastive_mode=uniform"]),
    ("BS 4 views + SCL (distribution-aware)", "bs_scl_aware", ["loss.objective=bs+scl"]),
    ("BS 4 views + ACL (distribution-aware)", "bs_acl", ["loss.objective=bs+acl"]),
]


def cell(value):
    return "n/a" if value is None else f"{value:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10_jpeg.npz"))
    parser.add_argument("--out", default=str(REPO / "runs" / "cifar10_ablation"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--only", nargs="*", help="run names to run (default: all)")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    schedule = [
        f"data.root={args.data}", f"optim.epochs={args.epochs}", "optim.warmup_epochs=1", "optim.schedule=cosine",
        f"train.seed={args.seed}", f"data.num_workers={args.workers}", f"train.output_dir={out}",
        f"train.eval_every={args.epochs}", f"train.checkpoint_every_steps={args.checkpoint_every}",
    ]
    commands = []
    for label, name, overrides in SETTINGS:
        if args.only and name not in args.only:
            continue
        run = out / name
        command = [sys.executable, "-m", "ltcl.cli", "train", "-c", str(REPO / "configs" / "cifar10_lt_if100_acl.yaml")]
        for item in [*schedule, f"train.run_name={name}", *overrides]:
            command += ["--set", item]
        commands.append(shlex.join(["ltcl", *command[3:]]))
        if (run / "results.json").exists():
            print(f"[skip] {label}: finished")
            continue
        if (run / "checkpoint_last.pt").exists():
            command += ["--resume", str(run / "checkpoint_last.pt")]
        print(f"[run] {label}\n  {shlex.join(command)}", flush=True)
        subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    (out / "commands.sh").write_text("\n".join(commands) + "\n")

    # The fastest epoch, not the total: on a shared machine other work slows some epochs, never speeds one up.
    lines = ["| setting | Many | Medium | Few | All | fastest epoch |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, name, _ in SETTINGS:
        path = out / name / "results.json"
        if not path.exists():
            lines.append(f"| {label} | | | | (not run) | |")
            continue
        test = json.loads(path.read_text())["test"]
        seconds = min(float(r["epoch_seconds"]) for r in _metrics(out / name))
        lines.append(f"| {label} | {cell(test['many'])} | {cell(test['medium'])} | {cell(test['few'])} | "
                     f"{cell(test['all'])} | {seconds:.0f} s |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


def _metrics(run):
    import csv

    with (run / "metrics.csv").open() as file:
        return list(csv.DictReader(file))


if __name__ == "__main__":
    main()
