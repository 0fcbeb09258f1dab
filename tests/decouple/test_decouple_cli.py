"""``ltcl decouple`` end to end: one tiny digits run trained once, re-fitted with every method, read back.

Each re-fit must be a run like any other: its directory has the files of a trained run, its checkpoint rebuilds
the re-fitted classifier from its config alone (``load_trained_model``), its reported accuracy is what a fresh
evaluation of the saved checkpoint gives, ``ltcl eval`` reads it and ``ltcl compare`` tells the methods apart; the
backbone's weights never change (its BatchNorm statistics only with ``bn: shift``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ltcl.cli import main
from ltcl.engine.inference import evaluate_split, load_trained_model
from ltcl.models import DisAlignClassifier, LinearClassifier, NearestClassMeanClassifier

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "configs" / "digits_lt.yaml")
TINY = [
    "model.backbone=resnet8",
    "data.batch_size=32",
    "data.num_workers=0",
    "train.progress=false",
    "train.tensorboard=false",
    "train.amp=none",
    "optim.warmup_epochs=0",
    "train.eval_every=1",
    "optim.epochs=2",
    "train.max_steps_per_epoch=2",
]  # the digits' validation split (20 images a class) stays: tau-norm chooses tau on it
# method -> (classifier class, extra --set values): one epoch of two steps each, except cRT: two epochs (a best
# epoch to reload), on features of the evaluation transform computed once with frozen BatchNorm (the cached path)
TRAINED = ["train.max_steps_per_epoch=2", "decouple.batch_size=16"]
REFITS = {
    "crt": (LinearClassifier, [*TRAINED, "decouple.epochs=2", "decouple.bn=frozen", "decouple.view=test"]),
    "lws": (LinearClassifier, [*TRAINED, "decouple.epochs=1"]),
    "tau_norm": (LinearClassifier, []),
    "ncm": (NearestClassMeanClassifier, []),
    "disalign": (DisAlignClassifier, [*TRAINED, "decouple.epochs=1"]),
    "mislas": (LinearClassifier, [*TRAINED, "decouple.epochs=1"]),
}


def sets(*overrides):
    return [item for o in overrides for item in ("--set", o)]


@pytest.fixture(scope="session")
def source(tmp_path_factory) -> Path:
    """checkpoint_last.pt of a digits run: resnet8, 2 epochs of 2 steps."""
    out = tmp_path_factory.mktemp("decouple")
    assert main(["train", "-c", DIGITS, *sets(*TINY, f"train.output_dir={out}")]) == 0
    return out / "digits_lt" / "checkpoint_last.pt"


@pytest.fixture(scope="session")
def refits(source) -> dict[str, Path]:
    runs = {}
    for name, (_, extra) in REFITS.items():
        out = source.parent.parent / f"refit_{name}"
        assert main(["decouple", "--checkpoint", str(source), "--method", name, "--out", str(out), *sets(*extra)]) == 0
        runs[name] = out
    return runs


def test_every_refit_is_a_run_that_eval_reads(source, refits):
    saved = torch.load(source, weights_only=True)["model"]
    for name, run in refits.items():
        expected, _ = REFITS[name]
        for file in ("config.yaml", "class_counts.json", "metrics.csv", "checkpoint_last.pt", "checkpoint_best.pt",
                     "results.json", "report.md"):  # fmt: skip
            assert (run / file).is_file(), (name, file)
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["decouple"]["method"] == name
        assert config["run"]["source_checkpoint"] == str(source) and config["run"]["source_epoch"] == 2
        trained = load_trained_model(run / "checkpoint_last.pt", ["data.num_workers=0"], device="cpu")
        assert type(trained.model.classifier) is expected, name
        # what results.json reports is the saved model's accuracy, as a fresh evaluation gives it
        results = json.loads((run / "results.json").read_text())
        assert results["test"] == pytest.approx(evaluate_split(trained, "test").as_dict()), name
        assert results["decouple"]["source_checkpoint"] == str(source)
        # the backbone never trains; its BatchNorm statistics move only with bn: shift
        weights = trained.model.state_dict()
        shift = config["decouple"].get("bn") == "shift"
        for key, value in saved.items():
            if key.startswith("classifier."):
                continue
            statistic = key.endswith(("running_mean", "running_var", "num_batches_tracked"))
            if statistic and shift:
                continue
            assert torch.equal(weights[key], value), (name, key)
        if shift:
            moved = [k for k in saved if k.endswith("running_mean") and not torch.equal(weights[k], saved[k])]
            assert moved, name


def test_the_best_epoch_is_reloaded_and_reported(refits):
    results = json.loads((refits["crt"] / "results.json").read_text())
    best = results["best_epoch"]
    assert best in (1, 2) and set(results["rows"]) >= {"test (last epoch, 2)", f"test (best on val, epoch {best})"}
    trained = load_trained_model(refits["crt"] / "checkpoint_best.pt", ["data.num_workers=0"], device="cpu")
    assert trained.epoch == best
    assert results["test_best_val"] == pytest.approx(evaluate_split(trained, "test").as_dict())


def test_ltcl_eval_reads_a_refit_from_the_command_line(refits, capsys):
    run = refits["disalign"]
    assert main(["eval", "--checkpoint", str(run / "checkpoint_last.pt"), "--json", *sets("data.num_workers=0")]) == 0
    entry = json.loads(capsys.readouterr().out)
    results = json.loads((run / "results.json").read_text())
    assert {k: entry[k] for k in ("many", "medium", "few", "all")} == pytest.approx(results["test"])


def test_tau_is_chosen_on_validation_and_ncm_fits_class_means(refits):
    results = json.loads((refits["tau_norm"] / "results.json").read_text())
    fit = results["decouple"]["fit"]
    assert fit["chosen_on"] == "val" and fit["tau"] in results["decouple"]["section"]["tau_grid"]
    assert max(r["all"] for r in fit["grid"]) == next(r["all"] for r in fit["grid"] if r["tau"] == fit["tau"])
    assert (refits["tau_norm"] / "tau_grid.csv").is_file()
    means = torch.load(refits["ncm"] / "checkpoint_last.pt", weights_only=True)["model"]["classifier.weight"]
    assert means.shape == (10, 64) and bool(means.norm(dim=1).le(1 + 1e-5).all())  # means of unit vectors


def test_compare_tells_the_methods_apart(refits):
    from ltcl.analysis.tables import compare_runs

    rows = compare_runs([refits["crt"], refits["lws"], refits["tau_norm"]])
    labels = sorted(r.label for r in rows)
    assert len(rows) == 3 and all(any(f"decouple.method={m}" in label for label in labels) for m in ("crt", "lws"))


def test_refusals_are_one_sentence(source, refits, tmp_path, capsys):
    base = ["decouple", "--checkpoint", str(source), "--out", str(tmp_path / "x")]
    assert main([*base, "--method", "crt", *sets("model.backbone=resnet20")]) == 2
    assert "would change model.backbone" in capsys.readouterr().err
    assert main([*base, "--method", "cRT"]) == 2
    assert "not a registered two-stage re-fitter" in capsys.readouterr().err
    assert main([*base, "--method", "tau_norm", *sets("data.val_per_class=0")]) == 2
    assert "decouple.tau=T" in capsys.readouterr().err
    again = ["decouple", "--checkpoint", str(source), "--method", "ncm", "--out", str(refits["ncm"])]
    assert main(again) == 2 and "holds a finished run" in capsys.readouterr().err
    # ltcl train cannot continue a re-fit: it names the command that made it
    assert main(["train", "--resume", str(refits["lws"] / "checkpoint_last.pt")]) == 2
    assert "re-fit it again with ltcl decouple" in capsys.readouterr().err
