"""The paper's ablation (Tables 5-6, Fig. 4b) and its rivals on CIFAR-10-LT IF100, every setting on one budget.

Each run is a plain ``ltcl train`` of configs/cifar10_lt_if100_acl.yaml (ResNet-32, batch 128, lr 0.07, alpha 0.1,
tau 0.05, 4 views with 2/3/4 contrastive views by shot group, train.amp auto (bf16 on CPUs with native bf16
units, fp32 elsewhere: compare rows of one machine), on-device augmentation) with a short schedule:
``--epochs`` epochs (20), 1 warm-up epoch then cosine, the validation split (200 unused training images per class,
none for the head class) evaluated every epoch for checkpoint selection, the test set once at the end.

Resumable: finished runs (results.json) are skipped, a killed one continues from its checkpoint_last.pt (saved
every ``--checkpoint-every`` steps). After each run its row goes into the results csv (one row per setting, seed
and schedule length, with the setting's label). ``ltcl compare --csv`` turns it into the README's table (mean ± std
over seeds); ``--table`` prints the same table through the same code (ltcl.analysis.leaderboard) and below it the
ablation's questions, each a paired difference with its 95% confidence interval.

    python benchmarks/cifar10_ablation.py --data ../shared/data/cifar10_jpeg.npz            # everything, in order
    python benchmarks/cifar10_ablation.py --only bs_acl bs_scl_aware --seeds 0 1
    python benchmarks/cifar10_ablation.py --table                                          # print the table
    python benchmarks/cifar10_ablation.py --pipeline --epochs 5     # bf16 vs float32, on-device vs PIL augmentation
    python benchmarks/cifar10_ablation.py --pipeline --epochs 5 --table     # its table and paired differences
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from ltcl.analysis import leaderboard as board
from ltcl.analysis import leaderboard_format as board_format
from ltcl.analysis import leaderboard_rows as board_rows
from ltcl.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cifar10_lt_if100_acl.yaml"
CSV = REPO / "benchmarks" / "results" / "cifar10_lt_ablation.csv"
COLUMNS = ["setting", "label", "seed", "epochs", "many", "medium", "few", "all", "val_best_all", "revision",
           "seconds_per_epoch"]  # fmt: skip
ONE_VIEW = ["views.num_views=1", "views.presets=[cifar_autoaugment_cutout]"]  # the first view: AutoAugment + Cutout
# GPaCo as its authors run it (configs/rivals/cifar10_lt_if100_gpaco.yaml), shared by its two queue starts
GPACO = [
    "loss.objective=gpaco",
    "views.num_views=2",
    "views.presets=[cifar_autoaugment_cutout,simclr]",
    "views.contrastive_mode=uniform",
    "loss.gpaco.dim=32",
]
# name -> (table label, overrides of the config); the paper's ablation first, then the rivals
SETTINGS = {
    "ce_1view": ("CE, 1 view", ["loss.objective=ce", *ONE_VIEW]),
    "bs_1view": ("BS, 1 view", ["loss.objective=bs", *ONE_VIEW]),
    "bs_4views": ("BS, 4 views", ["loss.objective=bs"]),
    "bs_scl_uniform": ("BS + SCL, uniform views", ["loss.objective=bs+scl", "views.contrastive_mode=uniform"]),
    "bs_scl_aware": ("BS + SCL, distribution-aware views", ["loss.objective=bs+scl"]),
    "bs_acl": ("BS + ACL (ours)", ["loss.objective=bs+acl"]),
    "bs_acl_noweights": ("BS + ACL without negative weights", ["loss.acl.negative_weighting=none"]),
    "bs_acl_nocenters": ("BS + ACL without class centres", ["loss.acl.use_centers=false"]),
    # GPaCo as its authors run it (configs/rivals/cifar10_lt_if100_gpaco.yaml): both views through the same encoder,
    # a queue of 1024 detached keys with labels (random start), their three-layer head, alpha 0.01, beta = gamma = 1
    "gpaco": ("GPaCo", GPACO),
    # GPaCo with its queue started empty (masked until real keys fill it) instead of the authors' random keys and
    # labels: the only difference from "gpaco", so a pair of runs of one seed measures what the start changes
    "gpaco_empty": ("GPaCo, queue started empty", [*GPACO, "loss.gpaco.queue_start=empty"]),
    # The GPaCo of ltcl 0.1 (revision 8cd7420): no queue, the network's head, 4 views. Kept as measured; this code
    # cannot make it again.
    "gpaco_noqueue": ("GPaCo without its queue (ltcl 0.1)", None),
    # BCL as its authors run it (configs/rivals/cifar10_lt_if100_la_bcl.yaml): logit adjustment on view 1 weighted
    # 2.0, BCL on views 2-3 weighted 0.6 at tau 0.1, three views, a 512-128 head with BatchNorm
    "la_bcl": (
        "LA + BCL",
        [
            "loss.objective=la+bcl",
            "loss.cls_weight=2.0",
            "loss.alpha=0.6",
            "loss.temperature=0.1",
            "views.num_views=3",
            "views.presets=[cifar_autoaugment_cutout,simclr,simclr]",
            "views.contrastive_mode=uniform",
            "model.projection_hidden=512",
            "model.projection_dim=128",
            "model.projection_bn=true",
        ],
    ),
    # PaCo as its authors run it (configs/rivals/cifar10_lt_if100_paco.yaml): query view 1, key view 2 through a
    # momentum encoder, a queue of 1024 labelled keys, alpha 0.01, beta = gamma = 1, BatchNorm in the head
    "paco": (
        "PaCo",
        [
            "loss.objective=paco",
            "views.num_views=2",
            "views.presets=[cifar_autoaugment_cutout,simclr]",
            "views.contrastive_mode=uniform",
            "model.projection_bn=true",
        ],
    ),
    # ProCo (configs/rivals/cifar10_lt_if100_proco.yaml): logit adjustment on view 1, the vMF loss on views 2-3
    "proco": (
        "ProCo",
        [
            "loss.objective=proco",
            "views.num_views=3",
            "views.presets=[cifar_autoaugment_cutout,simclr,simclr]",
            "views.contrastive_mode=uniform",
            "model.projection_hidden=512",
            "model.projection_dim=128",
            "model.projection_bn=true",
            "loss.alpha=1.0",
            "loss.temperature=0.1",
        ],
    ),
    # GML (configs/rivals/cifar10_lt_if100_gml.yaml): view 1 classified, view 2 the query, view 3 the key of a
    # momentum encoder, a class-partitioned queue of 4096, a cosine classifier at scale 30
    "gml": (
        "GML",
        [
            "loss.objective=gml",
            "views.num_views=3",
            "views.presets=[cifar_autoaugment_cutout]",
            "views.contrastive_mode=uniform",
            "model.classifier=cosine",
            "model.cosine_scale=30",
            "model.projection_bn=true",
            "loss.temperature=0.1",
        ],
    ),
    # KCL (configs/rivals/cifar10_lt_if100_kcl.yaml): 6 positives from a queue of labelled keys, a linear head, then
    # a class-balanced classifier stage on frozen features in the last third of the epochs
    "kcl": (
        "KCL",
        [
            "loss.objective=kcl",
            "views.num_views=2",
            "views.presets=[cifar_autoaugment_cutout,cifar_autoaugment_cutout]",
            "views.contrastive_mode=uniform",
            "model.projection_hidden=0",
            "model.projection_dim=128",
            "loss.temperature=0.07",
            "loss.kcl.queue_size=8192",
            "loss.kcl.key_momentum=0.99",
        ],
    ),
    # DSCL (configs/rivals/cifar10_lt_if100_dscl.yaml): decoupled positive weights (beta 8), patch self-distillation,
    # a momentum encoder and a queue of 7040 keys, two SimCLR-style views
    "dscl": (
        "DSCL",
        [
            "loss.objective=dscl",
            "views.num_views=2",
            "views.presets=[simclr,simclr]",
            "views.contrastive_mode=uniform",
            "model.projection_dim=128",
            "loss.temperature=0.07",
            "loss.dscl.queue_size=7040",
            "loss.dscl.patch_size=8",
        ],
    ),
    # LDAM-DRW (configs/rivals/cifar10_lt_if100_ldam_drw.yaml): one view, cosine logits scaled by s = 30 in the loss,
    # re-weighting from 80% of the epochs (their 160 of 200)
    "ldam_drw": (
        "LDAM-DRW",
        ["loss.objective=ldam", "model.classifier=cosine", "model.cosine_scale=1.0", *ONE_VIEW],
    ),
    # The re-balancing losses on one view with a linear head, their authors' values (configs/rivals/cifar10_lt_if100_
    # {lade,cb_focal,focal,vs}.yaml): the section defaults are those values.
    "lade": ("LADE", ["loss.objective=lade", "loss.lade.remine_lambda=0.01", *ONE_VIEW]),  # its CIFAR README value
    "cb_focal": ("Class-balanced focal (sigmoid)", ["loss.objective=cb_focal", *ONE_VIEW]),
    "focal": ("Focal (sigmoid)", ["loss.objective=focal", *ONE_VIEW]),
    "vs": ("VS loss", ["loss.objective=vs", *ONE_VIEW]),
    "cb_ce": ("Class-balanced CE", ["loss.objective=cb_ce", *ONE_VIEW]),
    # The samplers under CE on one view (Kang et al., ICLR 2020, train their stage 1 with each of them)
    **{
        f"ce_{sampler}": (f"CE, {label} sampler", ["loss.objective=ce", f"data.sampler={sampler}", *ONE_VIEW])
        for sampler, label in (
            ("class_balanced", "class-balanced"),
            ("square_root", "square-root"),
            ("progressive", "progressive"),
        )
    },  # fmt: skip
    # Mixing of the CE term on one view, each strategy's own defaults (ltcl methods lists them); CE + mixup is also
    # MiSLAS's stage 1 (configs/rivals/cifar10_lt_if100_mislas_stage1.yaml), re-fitted below by its stage 2
    **{
        f"ce_{m}": (f"CE + {label}", ["loss.objective=ce", f"loss.mixing={m}", *ONE_VIEW])
        for m, label in (("mixup", "mixup"), ("cutmix", "CutMix"), ("remix", "Remix"))
    },  # fmt: skip
    # BBN (configs/rivals/cifar10_lt_if100_bbn.yaml): its two-branch ResNet-32, the reversed sampler for the second
    # branch, the cumulative schedule over all epochs
    "bbn": ("BBN", ["loss.objective=bbn", "model.backbone=bbn_resnet32", *ONE_VIEW]),
    # The causal model with TDE (configs/rivals/cifar10_lt_if100_tde.yaml): its CIFAR values alpha 1, no lr scaling
    # of the moving-average momentum
    "tde": (
        "Causal model + TDE",
        [
            "loss.objective=tde",
            "model.backbone=bbn_resnet32",
            "model.classifier=causal",
            "loss.tde.alpha=1.0",
            "loss.tde.momentum_lr_scale=0.0",
            *ONE_VIEW,
        ],
    ),  # fmt: skip
    # The defaults' check (BS + ACL, short schedule): float32 with PIL loader workers (the old default) against
    # bf16 autocast, in the loader and on the device (the new default).
    "fp32_loader": (
        "BS + ACL, float32, PIL loader",
        ["train.amp=none", "train.channels_last=false", "data.augment_on=loader"],
    ),
    "bf16_loader": ("BS + ACL, bf16, PIL loader", ["train.amp=bf16", "data.augment_on=loader"]),
    "bf16_device": ("BS + ACL, bf16, on-device augmentation", ["train.amp=bf16", "data.augment_on=device"]),
}
# Two-stage re-fits: name -> (table label, the trained setting whose last checkpoint is re-fitted, ltcl decouple's
# method). The backbone stays frozen; the re-fit's own schedule is the method's paper's (ltcl methods lists it).
REFIT_METHODS = {"crt": "cRT", "lws": "LWS", "tau_norm": "tau-norm", "ncm": "NCM", "disalign": "DisAlign"}
REFITS = {
    f"{source}_{method}": (f"{SETTINGS[source][0].removesuffix(' (ours)')}, then {label}", source, method)
    for source in ("ce_1view", "bs_1view", "bs_acl")
    for method, label in REFIT_METHODS.items()
} | {
    "ce_mixup_mislas": ("MiSLAS (CE + mixup, then its stage 2)", "ce_mixup", "mislas"),
    # DSCL's authors train its classifier in a second stage: class-balanced, on the frozen backbone (equal_lincls.py).
    # ltcl's one-command DSCL trains it jointly; cRT on its last checkpoint is the nearest to their stage 2.
    "dscl_crt": ("DSCL, then cRT", "dscl", "crt"),
}
LABELS = {name: label for name, (label, _) in SETTINGS.items()} | {name: r[0] for name, r in REFITS.items()}
# The order runs are made in: what the issue asks first, then the second seeds and the rivals.
PLAN = [
    ("bs_acl", 0), ("bs_scl_aware", 0), ("bs_4views", 0), ("bs_1view", 0), ("ce_1view", 0), ("bs_scl_uniform", 0),
    ("bs_acl_noweights", 0), ("bs_acl_nocenters", 0), ("bs_acl", 1), ("bs_scl_aware", 1), ("bs_4views", 1),
    ("gpaco", 0), ("la_bcl", 0), ("ldam_drw", 0), ("bs_1view", 1), ("ce_1view", 1), ("bs_scl_uniform", 1),
    ("bs_acl_noweights", 1), ("bs_acl_nocenters", 1), ("gpaco", 1), ("la_bcl", 1), ("ldam_drw", 1),
]  # fmt: skip
PIPELINE_PLAN = [(s, seed) for seed in (0, 1) for s in ("bf16_device", "bf16_loader", "fp32_loader")]
# The check's two questions, each a difference of two settings that share everything else (the same seeds)
PIPELINE_DIFFERENCES = [
    ("on-device augmentation - PIL loader (both bf16)", "bf16_device", "bf16_loader"),
    ("bf16 - float32 (both PIL loader)", "bf16_loader", "fp32_loader"),
]

# The ablation's questions, the same way: the paper's Table 6 steps, Fig. 4b's steps (SCL -> ACL without negative
# weights -> ACL) and the centres, the baselines' steps, then what `ltcl compare --baseline bs_acl` does not show
# (every setting against BS + ACL is there already): GPaCo's queue start, CE's samplers and mixing, the other re-fits
ABLATION_DIFFERENCES = [
    ("BS + ACL - BS + SCL, distribution-aware views", "bs_acl", "bs_scl_aware"),
    ("BS + ACL - BS + SCL, uniform views", "bs_acl", "bs_scl_uniform"),
    ("BS + ACL - BS, 4 views", "bs_acl", "bs_4views"),
    ("BS + SCL, distribution-aware - BS, 4 views", "bs_scl_aware", "bs_4views"),
    ("SCL: distribution-aware - uniform views", "bs_scl_aware", "bs_scl_uniform"),
    ("ACL without negative weights - SCL, distribution-aware views", "bs_acl_noweights", "bs_scl_aware"),
    ("ACL - ACL without negative weights", "bs_acl", "bs_acl_noweights"),
    ("ACL - ACL without class centres", "bs_acl", "bs_acl_nocenters"),
    ("BS, 4 views - BS, 1 view", "bs_4views", "bs_1view"),
    ("BS - CE, 1 view", "bs_1view", "ce_1view"),
    ("GPaCo, queue started empty - GPaCo", "gpaco_empty", "gpaco"),
    *[
        (f"{SETTINGS[name][0]} - CE, 1 view", name, "ce_1view")
        for name in SETTINGS
        if name.startswith("ce_") and name != "ce_1view"
    ],  # fmt: skip
    *[
        (f"{label} - {SETTINGS[source][0]}", name, source)
        for name, (label, source, _) in REFITS.items()
        if source != "bs_acl"
    ],
]


def run_name(setting: str, seed: int, epochs: int) -> str:
    return f"{setting}_seed{seed}_e{epochs}"


def command(args, setting: str, seed: int) -> list[str]:
    sets = [
        f"data.root={args.data}", f"optim.epochs={args.epochs}", "optim.warmup_epochs=1", "optim.schedule=cosine",
        f"train.seed={seed}", f"train.output_dir={args.out}", f"train.run_name={run_name(setting, seed, args.epochs)}",
        "train.eval_every=1", f"train.checkpoint_every_steps={args.checkpoint_every}", "train.progress=false",
        *SETTINGS[setting][1],
        *args.overrides,
    ]  # fmt: skip
    return [sys.executable, "-m", "ltcl.cli", "train", "-c", str(CONFIG), *[w for s in sets for w in ("--set", s)]]


def refit_command(args, setting: str, seed: int) -> tuple[Path, list[str]]:
    """The re-fit's run directory (beside its source run) and its ltcl decouple command."""
    _, source, method = REFITS[setting]
    source_run = Path(args.out) / run_name(source, seed, args.epochs)
    run = source_run.parent / f"{source_run.name}_{method}"
    words = [sys.executable, "-m", "ltcl.cli", "decouple", "--checkpoint", str(source_run / "checkpoint_last.pt")]
    return run, [*words, "--method", method, "--out", str(run), *[w for s in args.overrides for w in ("--set", s)]]


def result_row(run: Path, setting: str, seed: int, epochs: int) -> dict:
    results = json.loads((run / "results.json").read_text())
    with (run / "metrics.csv").open() as file:
        seconds = [float(r["epoch_seconds"]) for r in csv.DictReader(file)]
    test, best = results["test"], results.get("test_best_val") or {}
    row = {
        "setting": setting,
        "label": LABELS[setting],
        "seed": seed,
        "epochs": epochs,
        "revision": results["code_revision"],
        "val_best_all": _num(best.get("all")),
        "seconds_per_epoch": f"{statistics.median(seconds):.1f}",
    }
    return row | {k: _num(test[k]) for k in ("many", "medium", "few", "all")}


def _num(value) -> str:
    return "" if value is None else f"{value:.2f}"


def read_rows(path: Path = CSV) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as file:
        return list(csv.DictReader(file))


def write_row(row: dict, path: Path = CSV) -> None:
    """Adds or replaces the row of (setting, seed, epochs)."""
    key = (row["setting"], str(row["seed"]), str(row["epochs"]))
    rows = [r for r in read_rows(path) if (r["setting"], r["seed"], r["epochs"]) != key] + [row]
    for r in rows:  # rows written before the csv had labels
        r["label"] = r.get("label") or SETTINGS.get(r["setting"], (r["setting"],))[0]
    order = {name: i for i, name in enumerate(SETTINGS)}
    rows.sort(key=lambda r: (int(r["epochs"]), order.get(r["setting"], 99), int(r["seed"])))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def tables(path: Path, epochs: int, questions=ABLATION_DIFFERENCES) -> str:
    """The csv's runs of ``epochs`` epochs as ``ltcl compare --csv`` prints them (mean ± sample std over seeds, in
    the csv's order), then each question's difference (label, first, second), first minus second, paired by seed
    with its 95% confidence interval; questions without a shared seed are left out."""
    measurements = board.keep_epochs(board_rows.read_results_csv(path, LABELS), epochs, str(path))
    settings = board.build_settings(measurements)
    diffs = board.question_differences(settings, questions)
    return board_format.settings_table(settings) + "\n\n" + board_format.differences_table(diffs, settings)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10_jpeg.npz"))
    parser.add_argument("--out", default=str(REPO / "runs" / "cifar10_ablation"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--checkpoint-every", type=int, default=20, help="steps between checkpoints")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=[name for name, (_, sets) in SETTINGS.items() if sets is not None],
        help="settings to run (default: the plan)",
    )
    parser.add_argument("--seeds", nargs="*", type=int, help="with --only: the seeds (default 0)")
    parser.add_argument("--runs", nargs="*", metavar="SETTING:SEED", help="an explicit list of runs, in order")
    parser.add_argument("--csv", default=str(CSV), help="where the rows go")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra overrides for every run (smoke tests: --set train.max_steps_per_epoch=2)",
    )
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="run the precision / augmentation check (use with --epochs 5) instead of the ablation",
    )
    parser.add_argument(
        "--table", action="store_true", help="print the tables of the csv (settings, paired differences); run nothing"
    )
    args = parser.parse_args()
    csv_path = Path(args.csv)
    if args.table:
        try:
            print(tables(csv_path, args.epochs, PIPELINE_DIFFERENCES if args.pipeline else ABLATION_DIFFERENCES))
        except UserError as err:
            parser.exit(2, f"error: {err}\n")
        return
    plan = PIPELINE_PLAN if args.pipeline else PLAN
    if args.only:
        plan = [(s, seed) for s in args.only for seed in (args.seeds or [0])]
    if args.runs:
        plan = [(item.split(":")[0], int(item.split(":")[1])) for item in args.runs]
        runnable = {name for name, (_, sets) in SETTINGS.items() if sets is not None} | set(REFITS)
        unknown = sorted({s for s, _ in plan} - runnable)
        if unknown:
            parser.error(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}, {', '.join(REFITS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for setting, seed in plan:
        if setting in REFITS:
            run, words = refit_command(args, setting, seed)
            if not Path(words[5]).exists():
                print(f"[skipped] {run.name}: its source run has no checkpoint yet ({words[5]})", flush=True)
                continue
        else:
            run, words = out / run_name(setting, seed, args.epochs), command(args, setting, seed)
        if (run / "results.json").exists():
            print(f"[done] {run.name}", flush=True)
        else:
            if setting not in REFITS and (run / "checkpoint_last.pt").exists():
                words = [*words[:4], "--resume", str(run / "checkpoint_last.pt")]
            print(f"[run] {run.name}: {shlex.join(words)}", flush=True)
            status = subprocess.run(words, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
            if status != 0:  # a diverged or broken run is reported and left out of the table, never hidden
                print(f"[failed] {run.name}: exit status {status}", flush=True)
                continue
        write_row(result_row(run, setting, seed, args.epochs), csv_path)
    print(tables(csv_path, args.epochs, PIPELINE_DIFFERENCES if args.pipeline else ABLATION_DIFFERENCES))


if __name__ == "__main__":
    main()
