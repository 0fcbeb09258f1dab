"""train.loggers: metrics.csv always, TensorBoard by default, Weights & Biases offline; a logger that cannot start is
one note line and the run goes on; a resume continues one stream per logger.

The loggers are driven by hand (rows of made-up numbers) except in the two tests that check that training goes on
and that the trainer feeds them: those train one step of the bundled digits.
"""

import struct
import sys
import time
from pathlib import Path

import pytest

from ltcl.config import ConfigError, load_config
from ltcl.engine.loggers import EpochLogger, LoggerContext, active_loggers, open_loggers, register_logger
from ltcl.engine.rundir import RunDir
from ltcl.engine.trainer import train

REPO_ROOT = Path(__file__).resolve().parents[2]
DIGITS = str(REPO_ROOT / "configs" / "digits_lt.yaml")
ONE_STEP = ["optim.epochs=1", "train.max_steps_per_epoch=1", "data.batch_size=32", "model.backbone=resnet8",
            "data.num_workers=0", "train.progress=false", "optim.warmup_epochs=0"]  # fmt: skip


def row(epoch: int, loss: float = 1.0) -> dict:
    """A metrics row as the trainer makes it."""
    return {"epoch": epoch, "step": 10 * epoch, "lr": 0.1, "loss": loss, "train_acc": 50.0 + epoch,
            "images_per_s": 100.0, "epoch_seconds": 2.0, "eval_split": "val", "many": 60.0, "medium": 50.0,
            "few": None, "all": 55.0 + epoch}  # fmt: skip


def context(tmp_path, overrides=(), first_epoch=1) -> LoggerContext:
    cfg = load_config(DIGITS, [*overrides, f"train.output_dir={tmp_path}", "train.run_name=run"])
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    return LoggerContext(run_dir=run_dir, cfg=cfg, first_epoch=first_epoch)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's TensorBoard event files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_the_default_loggers_write_metrics_csv_and_tensorboard_events(tmp_path):
    ctx = context(tmp_path)
    assert ctx.cfg.train.loggers == ["tensorboard", "csv"] and active_loggers(ctx.cfg.train) == ["csv", "tensorboard"]
    loggers = open_loggers(ctx)
    for epoch in (1, 2):
        loggers.log_epoch(row(epoch))
    loggers.close()
    metrics = RunDir(ctx.run_dir).read_metrics()
    assert [r["epoch"] for r in metrics] == ["1", "2"] and metrics[1]["all"] == "57"
    logged = scalars(ctx.run_dir)
    assert logged["val/all"] == [(1, 56.0), (2, 57.0)] and logged["train/loss"] == [(1, 1.0), (2, 1.0)]
    assert "val/few" not in logged  # no number, no point


def test_train_tensorboard_false_still_turns_tensorboard_off_and_csv_is_always_written(tmp_path):
    # train.tensorboard is kept and mapped onto the list: false takes tensorboard out of train.loggers
    ctx = context(tmp_path, ["train.tensorboard=false"])
    assert active_loggers(ctx.cfg.train) == ["csv"]
    ctx = context(tmp_path, ["train.loggers=[]"])  # metrics.csv is the run's record: never left out
    loggers = open_loggers(ctx)
    loggers.log_epoch(row(1))
    loggers.close()
    assert len(RunDir(ctx.run_dir).read_metrics()) == 1
    assert not list(ctx.run_dir.glob("events.out.tfevents.*"))


def test_an_unknown_logger_is_refused_when_the_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="'tensorbord' is not a registered logger.*tensorboard"):
        train(load_config(DIGITS, ["train.loggers=[tensorbord,csv]", f"train.output_dir={tmp_path}"]))
    assert not (tmp_path / "digits_lt").exists()  # refused before anything was written


def test_a_resume_continues_the_tensorboard_stream_without_duplicated_epochs(tmp_path):
    first = open_loggers(context(tmp_path))
    for epoch in (1, 2, 3):  # the interrupted session logged epoch 3, whose checkpoint was not saved
        first.log_epoch(row(epoch, loss=1.0))
    first.close()
    # TensorBoard reads a run's event files in name order: <whole second>.<host>.<pid>.<writer count>. A resume is
    # a new process, a later second; here it is the same process, whose writer count may pass a power of ten
    # (".9" sorts after ".10") when other tests made writers first, so the resumed writer starts in a later second.
    time.sleep(1.01 - time.time() % 1)
    resumed = open_loggers(context(tmp_path, first_epoch=3))
    for epoch in (3, 4):
        resumed.log_epoch(row(epoch, loss=0.5))
    resumed.close()
    assert scalars(tmp_path / "run")["train/loss"] == [(1, 1.0), (2, 1.0), (3, 0.5), (4, 0.5)]


# ---------------------------------------------------------------------------------------------------------------
# Weights & Biases


def wandb_history(run_file: Path, rows: int) -> list[dict[str, str]]:
    """The history rows of a wandb offline run file, once it holds ``rows`` of them (wandb's writer is a process of
    its own: its file may lag the end of the run by a moment on a busy machine; 10 s at most)."""
    for _ in range(20):
        history = read_wandb_history(run_file)
        if len(history) >= rows:
            break
        time.sleep(0.5)
    return history


def read_wandb_history(run_file: Path) -> list[dict[str, str]]:
    """The history rows of a wandb offline run file (its records are protobufs in LevelDB-style log blocks)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, pending, rows = run_file.read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # padding up to the next block
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return rows


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """WANDB_MODE=offline, wandb's settings in the test's directory, and a server address nothing answers at: a
    logger that tried to reach the network would fail."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_wandb_offline_writes_its_run_directory_and_a_resume_keeps_the_run_id(offline_wandb, tmp_path, capsys):
    ctx = context(tmp_path, ["train.loggers=[csv,wandb]"])
    loggers = open_loggers(ctx)
    assert "note" not in capsys.readouterr().err
    for epoch in (1, 2):
        loggers.log_epoch(row(epoch, loss=1.0 / epoch))
    loggers.close()
    (first,) = sorted((ctx.run_dir / "wandb").glob("offline-run-*"))
    run_id = first.name.rsplit("-", 1)[1]
    history = wandb_history(first / f"run-{run_id}.wandb", rows=2)
    assert [(h["epoch"], h["train/loss"], h["val/all"]) for h in history] == [("1", "1", "56"), ("2", "0.5", "57")]
    assert all("val/few" not in h for h in history)

    time.sleep(1.1)  # wandb names offline runs by the second they start: a resume is never within the same one
    resumed = open_loggers(context(tmp_path, ["train.loggers=[csv,wandb]"], first_epoch=3))
    resumed.log_epoch(row(3, loss=0.25))
    resumed.close()
    second = [d for d in (ctx.run_dir / "wandb").glob("offline-run-*") if d != first]
    assert [d.name.rsplit("-", 1)[1] for d in second] == [run_id]  # the same run: wandb sync appends it
    assert [h["epoch"] for h in wandb_history(second[0] / f"run-{run_id}.wandb", rows=1)] == ["3"]

    fresh = open_loggers(context(tmp_path / "other", ["train.loggers=[csv,wandb]"]))
    fresh.close()
    (other,) = (tmp_path / "other" / "run" / "wandb").glob("offline-run-*")
    assert other.name.rsplit("-", 1)[1] != run_id  # a new run directory is a new wandb run


def test_a_logger_that_cannot_start_is_one_note_and_training_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the extra were not installed: import wandb fails
    cfg = load_config(DIGITS, [*ONE_STEP, "train.loggers=[csv,wandb,tensorboard]", f"train.output_dir={tmp_path}"])
    result = train(cfg)
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "wandb" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "pip install 'ltcl[wandb]'" in notes[0], err
    assert RunDir(result.run_dir).is_finished() and len(RunDir(result.run_dir).read_metrics()) == 1
    assert list(result.run_dir.glob("events.out.tfevents.*"))  # the other loggers ran


class Exploding(EpochLogger):
    """A logger of a plugin: starts, then fails on its first row."""

    name = "exploding_test_logger"
    rows: list = []

    def __init__(self, context: LoggerContext) -> None:
        self.context = context

    def log_epoch(self, row: dict) -> None:
        Exploding.rows.append(row["epoch"])
        raise ConnectionError("the server went away")


class Refusing(EpochLogger):
    name = "refusing_test_logger"

    def __init__(self, context: LoggerContext) -> None:
        raise RuntimeError("no licence")


def test_a_registered_logger_gets_every_row_and_one_that_fails_is_dropped_with_a_note(tmp_path, capsys):
    register_logger(Exploding)
    register_logger(Refusing)
    ctx = context(tmp_path, ["train.loggers=[exploding_test_logger,refusing_test_logger]"])
    loggers = open_loggers(ctx)
    for epoch in (1, 2):
        loggers.log_epoch(row(epoch))
    loggers.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "note: the refusing_test_logger logger cannot start (RuntimeError: no licence); the run goes on without it.",
        "note: the exploding_test_logger logger failed at epoch 1 (ConnectionError: the server went away); the run "
        "goes on without it.",
    ]
    assert Exploding.rows == [1] and len(RunDir(ctx.run_dir).read_metrics()) == 2


def test_the_trainer_feeds_the_loggers_from_the_first_epoch_on(tmp_path):
    class Recording(EpochLogger):
        name = "recording_test_logger"
        seen: list = []

        def __init__(self, context: LoggerContext) -> None:
            Recording.seen.append(("start", context.first_epoch, context.run_dir.name))

        def log_epoch(self, row: dict) -> None:
            Recording.seen.append(("row", row["epoch"], row["all"]))

        def close(self) -> None:
            Recording.seen.append(("close",))

    register_logger(Recording)
    cfg = load_config(DIGITS, [*ONE_STEP, "train.loggers=[recording_test_logger]", f"train.output_dir={tmp_path}",
                               "train.run_name=recorded"])  # fmt: skip
    result = train(cfg)
    test_all = RunDir(result.run_dir).read_metrics()[0]["all"]
    assert Recording.seen[0] == ("start", 1, "recorded") and Recording.seen[-1] == ("close",)
    assert [s[:2] for s in Recording.seen[1:-1]] == [("row", 1)]
    assert f"{Recording.seen[1][2]:.6g}" == test_all
