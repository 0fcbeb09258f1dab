"""Samplers (data.sampler): the class frequencies each policy promises, determinism, shards and resumes."""

import math
import signal

import pytest
import torch

from ltcl.config import load_config
from ltcl.data.samplers import SAMPLERS
from ltcl.data.sampling import EpochBatchSampler
from ltcl.engine.interrupts import TEST_SIGNAL_AT_STEP
from ltcl.engine.trainer import train
from tests.engine.test_training import DIGITS, TINY, ltcl, sets

COUNTS = [900, 300, 100, 30, 10]  # a long tail of 1,340 images


def labels() -> torch.Tensor:
    return torch.cat([torch.full((n,), j) for j, n in enumerate(COUNTS)])


def expected_shares(policy: str, progress: float) -> list[float]:
    """The class shares each policy draws, from its definition (not from the code)."""
    total = sum(COUNTS)
    if policy == "instance":
        return [n / total for n in COUNTS]
    if policy == "class_balanced":
        return [1 / len(COUNTS)] * len(COUNTS)
    if policy == "square_root":
        roots = [math.sqrt(n) for n in COUNTS]
        return [r / sum(roots) for r in roots]
    return [(1 - progress) * n / total + progress / len(COUNTS) for n in COUNTS]


CASES = [("instance", 0), ("class_balanced", 0), ("square_root", 0), ("progressive", 0), ("progressive", 0.5),
         ("progressive", 1)]  # fmt: skip


@pytest.mark.parametrize("policy, progress", CASES)
def test_each_policy_draws_its_class_shares(policy, progress):
    y = labels()
    draws = torch.cat([SAMPLERS.get(policy).draw(y, torch.Generator().manual_seed(s), progress) for s in range(30)])
    assert ((draws >= 0) & (draws < len(y))).all()
    shares = torch.bincount(y[draws], minlength=len(COUNTS)).double() / len(draws)
    for got, want in zip(shares.tolist(), expected_shares(policy, progress)):
        sigma = math.sqrt(want * (1 - want) / len(draws))
        assert abs(got - want) <= 4 * sigma + 1e-12, (policy, got, want)
    if policy == "instance":  # a permutation: every image once per epoch
        assert sorted(draws[: len(y)].tolist()) == list(range(len(y)))
    else:  # inside a class, every image is equally likely: the rarest class's 10 images all appear
        rare = draws[y[draws] == len(COUNTS) - 1]
        assert set(rare.tolist()) == set(range(len(y) - COUNTS[-1], len(y)))


@pytest.mark.parametrize("policy", list(SAMPLERS))
def test_batches_depend_on_seed_and_epoch_only_and_resume_mid_epoch(policy):
    y = labels()

    def batches(epoch, start=0, rank=0, world=1):
        sampler = EpochBatchSampler(len(y), 64, seed=3, rank=rank, world_size=world, labels=y, policy=policy, epochs=4)
        sampler.set_epoch(epoch, start)
        return list(sampler)

    full = batches(2)
    assert full == batches(2) and full != batches(1)
    assert batches(2, start=5) == full[5:]  # a resumed epoch draws the same remaining batches
    halves = [batches(2, rank=r, world=2) for r in (0, 1)]  # two processes: the same global batches, split
    assert [a + b for a, b in zip(*halves)] == full
    if SAMPLERS.get(policy).with_replacement:  # an image drawn twice in an epoch is augmented differently
        items = [item for batch in full for item in batch]
        seeds_of = {}
        for index, seed in items:
            seeds_of.setdefault(index, []).append(seed)
        repeated = [s for s in seeds_of.values() if len(s) > 1]
        assert repeated and all(len(set(s)) == len(s) for s in repeated)


def test_an_unknown_sampler_is_one_sentence_with_the_known_names():
    with pytest.raises(ValueError, match="data.sampler 'balanced' is not a registered sampler; known: instance"):
        train(load_config(DIGITS, ["data.sampler=balanced"]))


@pytest.mark.parametrize("policy", ["class_balanced", "square_root", "progressive"])
def test_each_sampler_trains_on_the_digits(tmp_path, policy):
    overrides = [*TINY, "optim.epochs=2", "train.max_steps_per_epoch=2", "train.tensorboard=false",
                 f"data.sampler={policy}", f"train.output_dir={tmp_path}"]  # fmt: skip
    result = train(load_config(DIGITS, overrides))
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_a_progressive_run_on_the_device_path_resumes_to_the_same_weights(tmp_path):
    common = [*TINY, "data.sampler=progressive", "data.augment_on=device", "optim.epochs=2",
              "train.max_steps_per_epoch=3", "train.deterministic=true", "train.amp=none"]  # fmt: skip
    straight = ltcl("train", "-c", DIGITS, *sets(*common, f"train.output_dir={tmp_path / 'straight'}"))
    assert "sampler progressive" in straight.stdout
    stopped = ltcl("train", "-c", DIGITS, *sets(*common, f"train.output_dir={tmp_path / 'stopped'}"),
                   env={TEST_SIGNAL_AT_STEP: "4:TERM"}, check=False)  # fmt: skip
    assert stopped.returncode == 128 + signal.SIGTERM
    ltcl("train", "--resume", str(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt"))
    want = torch.load(tmp_path / "straight" / "digits_lt" / "checkpoint_last.pt", weights_only=True)["model"]
    got = torch.load(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt", weights_only=True)["model"]
    assert all(torch.equal(want[k], got[k]) for k in want)
