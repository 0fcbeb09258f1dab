"""The reproducers of "A run never lies", through the real command line on the bundled digits.

Each test was a silent wrong answer before: a resume that changed the run, a NaN run that reported accuracy, a
checkpoint that advised unsafe unpickling, a photo judged by its centre 32 pixels.
"""

import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from ltcl.data.datasets import digits_arrays
from tests.run_ltcl import run_ltcl

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "configs" / "digits_lt.yaml")
SMOKE = [
    "train.max_steps_per_epoch=3",
    "optim.epochs=1",
    "optim.warmup_epochs=0",
    "model.backbone=resnet8",
    "data.num_workers=0",
    "train.progress=false",
]


def ltcl(*args, cwd=REPO, env=None, fresh_process=False):
    """``ltcl ARGS`` in ``cwd``, whatever its exit status; see tests/run_ltcl.py for when it is a fresh process."""
    return run_ltcl(*args, cwd=cwd, env=env, check=False, fresh_process=fresh_process)


def sets(*overrides):
    return [item for o in overrides for item in ("--set", o)]


def one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """A finished 1-epoch run (3 steps) of the bundled config."""
    out = tmp_path_factory.mktemp("smoke")
    proc = ltcl("train", "-c", DIGITS, *sets(*SMOKE, f"train.output_dir={out}"))
    assert proc.returncode == 0, proc.stderr
    return out / "digits_lt"


def test_the_readme_resume_line_refuses_to_turn_a_smoke_run_into_another_run(smoke_run):
    # Before: -c plus the config file's defaults silently resumed this 1-epoch run as a 200-epoch one.
    proc = ltcl("train", "-c", DIGITS, "--resume", str(smoke_run / "checkpoint_last.pt"))
    assert proc.returncode == 2
    message = one_sentence(proc.stderr)
    assert "optim.epochs 1 -> 30" in message and "train.max_steps_per_epoch 3 -> 0" in message
    assert "model.backbone 'resnet8' -> 'resnet20'" in message and "--extend-epochs" in message


def test_the_test_split_is_reported_for_the_last_and_the_best_on_validation_model(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    assert (smoke_run / "checkpoint_best.pt").exists() and results["best_epoch"] == 1
    assert set(results["rows"]) == {
        "val (last epoch, 1)",
        "test (last epoch, 1)",
        "val (best on val, epoch 1)",
        "test (best on val, epoch 1)",
    }
    rows = (smoke_run / "metrics.csv").read_text().splitlines()
    assert rows[1].split(",")[9] == "val"  # during training only the validation split is evaluated
    # The best epoch is the last one, so the report reuses the last model's numbers: they must be the best
    # checkpoint's own, as a fresh evaluation of the file gives them.
    for split in ("val", "test"):
        proc = ltcl("eval", "--checkpoint", str(smoke_run / "checkpoint_best.pt"), "--split", split, "--json")
        assert proc.returncode == 0, proc.stderr
        fresh = json.loads(proc.stdout)
        reported = results["rows"][f"{split} (best on val, epoch 1)"]
        assert {k: fresh[k] for k in ("many", "medium", "few", "all")} == {
            k: reported[k] for k in ("many", "medium", "few", "all")
        }


def test_a_finished_run_says_so_and_touches_nothing(smoke_run):
    before = {p.name: p.read_bytes() for p in smoke_run.iterdir() if p.is_file()}
    proc = ltcl("train", "--resume", str(smoke_run / "checkpoint_last.pt"))
    assert proc.returncode == 0 and "finished all 1 epochs already" in proc.stdout
    after = {p.name: p.read_bytes() for p in smoke_run.iterdir() if p.is_file()}
    assert after == before


def test_changed_hyperparameters_are_refused_and_the_record_is_kept(tmp_path):
    ltcl("train", "-c", DIGITS, *sets(*SMOKE, "optim.epochs=2", f"train.output_dir={tmp_path}"))
    run = tmp_path / "digits_lt"
    config_before = (run / "config.yaml").read_text()
    proc = ltcl("train", "--resume", str(run / "checkpoint_last.pt"), *sets("optim.lr=0.5", "optim.epochs=3"))
    assert proc.returncode == 2
    message = one_sentence(proc.stderr)
    assert "optim.lr 0.05 -> 0.5" in message and "optim.epochs 2 -> 3" in message
    proc = ltcl("train", "--resume", str(run / "checkpoint_last.pt"), *sets("model.projection_dim=16"))
    assert proc.returncode == 2 and "model.projection_dim 32 -> 16" in one_sentence(proc.stderr)
    assert "state_dict" not in proc.stderr and "size mismatch" not in proc.stderr

    # Extending the schedule is an explicit, recorded choice; config.yaml keeps the record of how the run began.
    proc = ltcl(
        "train",
        "--resume",
        str(run / "checkpoint_last.pt"),
        "--extend-epochs",
        "3",
        *sets("data.num_workers=0", "train.eval_every=3"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch 3/3" in proc.stdout and "extended to 3 epochs" in proc.stdout
    assert (run / "config.yaml").read_text() == config_before
    (record,) = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert record["extended_epochs"] == [2, 3] and record["changed"] == {"train.eval_every": [10, 3]}
    # it continues in epoch 3 (1-based, as metrics.csv counts) with no batch of it done
    assert (record["epoch"], record["batch"]) == (3, 0) and record["code_revision"]


def test_a_non_finite_loss_stops_the_run_and_reports_no_accuracy(tmp_path):
    # Before: exit 0, "loss nan", a NaN checkpoint and "Many 100.00 / All 10.00".
    proc = ltcl(
        "train",
        "-c",
        DIGITS,
        *sets(*SMOKE, "optim.lr=1e6", "loss.objective=bs", "optim.epochs=2", f"train.output_dir={tmp_path}"),
    )
    assert proc.returncode == 3
    message = one_sentence(proc.stderr)
    found = re.search(
        r"(classification \(bs\) loss became non-finite at epoch|weights or statistics "
        r"became non-finite in epoch) (\d)[ ,].*learning rate [0-9.e+]+",
        message,
    )
    assert found and "Hint:" in message, message
    # At lr 1e6 the first update already breaks the model: the stop is in epoch 1 (1-based, as the log counts), and
    # as no epoch finished with finite losses and weights, no checkpoint, result or report was written.
    assert found.group(2) == "1", message
    run = tmp_path / "digits_lt"
    assert "| Many |" not in proc.stdout
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith("events.out.tfevents")) == [
        "class_counts.json",
        "config.yaml",
    ]

    proc = ltcl(
        "train",
        "-c",
        DIGITS,
        *sets(*SMOKE, "optim.lr=1e6", "loss.objective=bs+acl", f"train.output_dir={tmp_path / 'acl'}"),
    )
    assert proc.returncode == 3 and re.search("became non-finite (at|in) epoch 1", one_sentence(proc.stderr))
    assert "features contain" not in proc.stderr


def test_a_checkpoint_with_nan_weights_is_never_evaluated(smoke_run, tmp_path):
    state = torch.load(smoke_run / "checkpoint_last.pt", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    image = tmp_path / "digit.png"
    Image.new("RGB", (32, 32)).save(image)
    for args in (["eval", "--checkpoint", str(broken)], ["predict", "--checkpoint", str(broken), str(image)]):
        proc = ltcl(*args)
        assert proc.returncode == 3 and "NaN or inf weights" in one_sentence(proc.stderr) and "%" not in proc.stdout


@pytest.mark.parametrize(
    "content, phrase",
    [
        (b"garbage, not a checkpoint", "is not a PyTorch checkpoint"),
        (None, "truncated or damaged"),  # the first half of a real checkpoint
    ],
)
def test_unreadable_checkpoints_get_one_sentence_and_no_unpickling_advice(smoke_run, tmp_path, content, phrase):
    path = tmp_path / "bad.pt"
    real = (smoke_run / "checkpoint_last.pt").read_bytes()
    path.write_bytes(content if content is not None else real[: len(real) // 2])
    proc = ltcl("eval", "--checkpoint", str(path))
    message = one_sentence(proc.stderr)
    assert proc.returncode == 2 and phrase in message and str(path) in message
    assert "weights_only" not in proc.stderr and "pickle" not in proc.stderr.lower()


def test_a_directory_and_a_missing_cuda_are_named(smoke_run):
    proc = ltcl("eval", "--checkpoint", str(smoke_run))
    assert (
        proc.returncode == 2 and "is a directory" in one_sentence(proc.stderr) and "checkpoint_last.pt" in proc.stderr
    )
    no_gpu = {"CUDA_VISIBLE_DEVICES": ""}  # on any machine: the subprocess sees no CUDA device
    for command in ("eval", "predict"):
        extra = [str(REPO / "README.md")] if command == "predict" else []
        proc = ltcl(command, "--checkpoint", str(smoke_run / "checkpoint_last.pt"), "--device", "cuda", *extra,
                    env=no_gpu)  # fmt: skip
        assert proc.returncode == 2 and "no CUDA device" in one_sentence(proc.stderr)


def test_predict_sees_the_whole_photo_and_goes_on_after_a_bad_file(smoke_run, tmp_path):
    images, labels, test = digits_arrays()
    small = Image.fromarray(images[test.nonzero()[0][0]])
    small.save(tmp_path / "a_small.png")
    small.resize((512, 512), Image.BILINEAR).save(tmp_path / "b_large.png")  # the same digit as a big photo
    (tmp_path / "c_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    proc = ltcl(
        "predict",
        "--checkpoint",
        str(smoke_run / "checkpoint_last.pt"),
        str(tmp_path),
        "--json",
        "--top-k",
        "10",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "1 image(s) could not be read" in proc.stderr
    globbed = ltcl("predict", "--checkpoint", str(smoke_run / "checkpoint_last.pt"), "*.png", "--json", cwd=tmp_path)
    assert globbed.returncode == 0 and len(globbed.stdout.splitlines()) == 2  # a quoted pattern: the two PNGs
    entries = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(e["path"]).name for e in entries] == ["a_small.png", "b_large.png", "c_broken.jpg"]
    assert "error" in entries[2] and "c_broken.jpg" in entries[2]["error"]
    small_p, large_p = ({t["class"]: t["probability"] for t in e["top"]} for e in entries[:2])
    # Resized as a whole, the 512-px photo is the 32-px digit again (up to resampling); a centre crop of it
    # (the old behaviour) would be an almost uniform grey patch.
    assert max(abs(small_p[c] - large_p[c]) for c in small_p) < 0.05


def test_checkpoints_work_from_any_directory(tmp_path, small_cifar10_npz):
    # Trained with a path relative to its working directory; evaluated from elsewhere.
    work = tmp_path / "work"
    work.mkdir()
    relative = os.path.relpath(small_cifar10_npz, work)
    proc = ltcl(
        "train",
        "-c",
        str(REPO / "configs" / "cifar10_lt_if100_acl.yaml"),
        *sets(
            f"data.root={relative}",
            "data.imbalance_factor=5",  # 120 ... 24 images per class in the small file: no class under 20
            *SMOKE,
            "data.batch_size=16",
            "data.eval_batch_size=1000",
            "train.output_dir=runs",
        ),
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    run = work / "runs" / "cifar10_lt_if100_acl"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["root"] == str(Path(small_cifar10_npz).resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = ltcl("eval", "--checkpoint", str(run / "checkpoint_last.pt"), "--json", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((run / "results.json").read_text())
    assert json.loads(proc.stdout)["all"] == pytest.approx(results["test"]["all"])
    assert results["test"]["few"] is None  # no class under 20 images: n/a, not 0


def test_logs_are_compact_and_free_of_carriage_returns(tmp_path):
    proc = ltcl(
        "train",
        "-c",
        DIGITS,
        *sets(*SMOKE, "train.progress=true", "data.num_workers=64", f"train.output_dir={tmp_path}"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout + proc.stderr  # not a terminal: one line per epoch, no bar frames
    head = proc.stdout.split("epoch 1/1")[0].strip().splitlines()
    assert len(head) <= 10 and head[0].startswith("ltcl train: digits_lt ->")  # not the 90-line config dump
    assert any("data.num_workers 64 lowered to" in line for line in head)
    assert "worker processes in total" not in proc.stderr  # PyTorch's warning about too many workers


def test_data_check_names_every_unreadable_image_and_skip_corrupt_leaves_them_out(tmp_path):
    for split, counts in (("train", {"ant": 6, "bee": 3}), ("val", {"ant": 2, "bee": 1})):
        for name, count in counts.items():
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (20, 20), (30 * i, 90, 20)).save(tmp_path / split / name / f"{i}.png")
    broken = tmp_path / "train" / "bee" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    config = tmp_path / "folder.yaml"
    config.write_text(f"data: {{dataset: image_folder, root: {tmp_path}}}\nviews: {{num_views: 1, presets: [none]}}\n")
    proc = ltcl("data", "-c", str(config), "--check")
    assert proc.returncode == 2 and str(broken) in proc.stdout and "1 image(s) are missing or unreadable" in proc.stderr
    assert "train / val / test 10 / 3 / none" in proc.stdout  # every image as given: no subsampling
    proc = ltcl("data", "-c", str(config), "--check", "--set", "data.skip_corrupt=true")
    assert proc.returncode == 0 and "1 unreadable image(s) are left out" in proc.stdout and str(broken) in proc.stdout


def test_data_names_a_split_list_whose_images_are_missing(tmp_path, lt_splits):
    # Before: an empty Places-LT root printed "62,500 / 7,300 / 36,500" and training failed mid-epoch.
    lists = lt_splits / "classifier-balancing"
    sets_ = [f"data.root={tmp_path}"] + [
        f"data.{s}_list={lists / f'Places_LT_{s}.txt'}" for s in ("train", "val", "test")
    ]
    proc = ltcl("data", "-c", str(REPO / "configs" / "places_lt_r152_acl.yaml"), *sets(*sets_))
    assert proc.returncode == 2 and "62500 of 62500" in one_sentence(proc.stderr).replace(",", "")
    assert str(tmp_path) in proc.stderr
