"""Engine parts on their own: schedule, evaluation counts, sampling, checkpoints."""

import math
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ltcl.config import ConfigError, OptimConfig, load_config
from ltcl.data.sampling import EpochBatchSampler, SeededDataset, ShardSampler
from ltcl.engine import checkpoint as ckpt
from ltcl.engine.evaluate import accuracy_from_counts, format_table
from ltcl.schedule import learning_rate

# ---------------------------------------------------------------------------------------------------------
# Learning-rate schedule


def test_warmup_then_steps_follow_the_cifar_recipe():
    optim = OptimConfig(epochs=200, lr=0.07, warmup_epochs=10, schedule="step", milestones=[160, 180], gamma=0.1)
    steps = 96  # steps per epoch
    assert learning_rate(optim, 0, steps) == pytest.approx(0.07 / (10 * steps))
    assert learning_rate(optim, 10 * steps - 1, steps) == pytest.approx(0.07)
    assert learning_rate(optim, 10 * steps, steps) == pytest.approx(0.07)
    assert learning_rate(optim, 160 * steps - 1, steps) == pytest.approx(0.07)
    assert learning_rate(optim, 160 * steps, steps) == pytest.approx(0.007)
    assert learning_rate(optim, 180 * steps, steps) == pytest.approx(0.0007)


def test_cosine_decays_from_lr_to_zero_after_warmup():
    optim = OptimConfig(epochs=10, lr=0.05, warmup_epochs=0, schedule="cosine")
    steps = 4
    assert learning_rate(optim, 0, steps) == pytest.approx(0.05)
    assert learning_rate(optim, 20, steps) == pytest.approx(0.025)  # half way
    assert learning_rate(optim, 39, steps) == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))


@pytest.mark.parametrize(
    "change, message",
    [
        (["optim.schedule=linear"], "'optim.schedule' expects one of step, cosine"),
        (["optim.epochs=0"], "'optim.epochs' expects an integer >= 1, got 0"),
        (["optim.warmup_epochs=300"], "optim.epochs (30), got 300: lower it with --set optim.warmup_epochs=N."),
        (["optim.lr=0"], "'optim.lr' expects a positive finite number, got 0.0"),
        (["optim.milestones=[180, 160]"], "optim.milestones must be increasing"),
    ],
)
def test_bad_schedules_are_rejected_when_the_config_loads(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(Path(__file__).parents[2] / "configs" / "digits_lt.yaml", change)


# ---------------------------------------------------------------------------------------------------------
# Evaluation


def test_group_accuracy_is_the_mean_of_per_class_accuracies():
    train_counts = [500, 150, 60, 40, 10, 5]  # many, many, medium, medium, few, few
    correct = torch.tensor([9.0, 5.0, 4.0, 1.0, 0.0, 2.0])
    seen = torch.tensor([10.0, 10.0, 5.0, 4.0, 2.0, 4.0])
    r = accuracy_from_counts(correct, seen, train_counts)
    assert r.many == pytest.approx(100 * (0.9 + 0.5) / 2)
    assert r.medium == pytest.approx(100 * (0.8 + 0.25) / 2)
    assert r.few == pytest.approx(100 * (0.0 + 0.5) / 2)
    assert r.all == pytest.approx(100 * 21 / 35)
    assert r.per_class[0] == pytest.approx(90.0) and r.images == 35


def test_empty_group_is_none_and_printed_na():
    r = accuracy_from_counts(torch.tensor([5.0, 3.0]), torch.tensor([10.0, 10.0]), [500, 50])
    assert r.few is None
    row = format_table({"test": r}).splitlines()[-1]
    assert row == "| test | 50.00 | 30.00 | n/a | 40.00 |"


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_item_exactly_once(world):
    items = sorted(i for r in range(world) for i in ShardSampler(10, r, world))
    assert items == list(range(10))


# ---------------------------------------------------------------------------------------------------------
# Sampling


def test_ranks_split_each_global_batch_and_together_equal_one_process():
    single = EpochBatchSampler(50, 8, seed=3)
    single.set_epoch(2)
    ranks = []
    for r in range(2):
        s = EpochBatchSampler(50, 8, seed=3, rank=r, world_size=2)
        s.set_epoch(2)
        ranks.append(list(s))
    for b, batch in enumerate(single):
        assert ranks[0][b] + ranks[1][b] == batch
    assert len(single) == 50 // 8
    flat = [i for batch in single for i, _ in batch]
    assert len(set(flat)) == len(flat)  # no image twice in an epoch


def test_epochs_differ_and_resume_skips_exactly_the_done_batches():
    s = EpochBatchSampler(40, 8, seed=0)
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first
    s.set_epoch(0, start_batch=3)
    assert list(s) == first[3:] and len(s) == len(first) - 3


def test_sampler_rejects_indivisible_batches_and_tiny_datasets():
    with pytest.raises(ValueError, match="must be divisible by the number of processes 3"):
        EpochBatchSampler(100, 8, seed=0, rank=0, world_size=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochBatchSampler(5, 8, seed=0)


class RandomItems(Dataset):
    """Each item draws from torch, numpy and Python random generators, as augmentations do."""

    def __len__(self):
        return 16

    def __getitem__(self, index):
        return torch.tensor([index, torch.rand(()).item(), np.random.rand(), random.random()])


def test_seeded_items_do_not_depend_on_workers_and_leave_the_caller_rng_alone():
    sampler = EpochBatchSampler(16, 4, seed=1)
    outputs = []
    for workers in (0, 2):
        loader = DataLoader(SeededDataset(RandomItems()), batch_sampler=sampler, num_workers=workers)
        outputs.append(torch.cat(list(loader)))
    torch.testing.assert_close(outputs[0], outputs[1])
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    SeededDataset(RandomItems())[(0, 123)]
    torch.testing.assert_close(torch.rand(3), expected)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    ckpt.save_atomic({"format": ckpt.FORMAT_VERSION, "model": {}, "rng": ckpt.rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    ckpt.save_atomic({"format": ckpt.FORMAT_VERSION, "model": {"w": torch.ones(2)}}, path)

    def broken_save(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_atomic({"format": ckpt.FORMAT_VERSION, "model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_last.pt"]  # no temporary file left behind


def test_loading_rejects_missing_garbage_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "none.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=f"Checkpoint {garbage} is not a PyTorch checkpoint written by ltcl"):
        ckpt.load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(ValueError, match="was not written by ltcl's trainer"):
        ckpt.load_checkpoint(Path(foreign))
    older = tmp_path / "older.pt"
    torch.save({"format": 1, "model": {}}, older)
    with pytest.raises(ValueError, match="has format 1; this ltcl reads formats 2, 3"):
        ckpt.load_checkpoint(older)


class _RecordingRun(torch.nn.Module):
    """Stands in for the compiled network: records each call (input shape, projection flag) and runs the network."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.calls: list[tuple[tuple[int, ...], bool]] = []

    def forward(self, images: torch.Tensor, with_projection: bool):
        self.calls.append((tuple(images.shape), with_projection))
        return self.network(images, with_projection=with_projection)


def test_multiview_forward_runs_the_compiled_network_once_per_view_group():
    from ltcl.config import ModelConfig
    from ltcl.engine.loop import MultiViewForward
    from ltcl.models import build_network

    model = build_network(ModelConfig(backbone="resnet8"), 3).eval()
    # A compiled module refuses len() and bool(): constructing the wrapper must neither call nor test it.
    MultiViewForward(model, torch.compile(model))
    groups = [torch.randn(4, 3, 32, 32), torch.randn(2, 3, 24, 24)]  # two view sizes: two forward passes
    run = _RecordingRun(model)
    forward = MultiViewForward(model, run)
    outputs = forward(groups, True)
    assert run.calls == [((4, 3, 32, 32), True), ((2, 3, 24, 24), True)]  # the compiled one, each group once
    assert len(outputs) == len(groups)
    for out, images in zip(outputs, groups):
        want = model(images, with_projection=True)
        assert torch.equal(out.logits, want.logits) and torch.equal(out.projections, want.projections)
    # One set of parameters (the compiled module shares the network's): the optimizer sees no copies.
    assert {id(p) for p in forward.parameters()} == {id(p) for p in model.parameters()}

    plain = _RecordingRun(model)  # without a compiled module the network itself runs
    assert len(MultiViewForward(plain)(groups, False)) == 2
    assert plain.calls == [((4, 3, 32, 32), False), ((2, 3, 24, 24), False)]
