"""Shifted test priors (SADE's test-agnostic protocol): the resampled test sets against their expected class
counts, forward and backward, ranked by training count; SADE's own CIFAR selection, image for image; the
prior-corrected logits."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ltcl.errors import UserError
from ltcl.evaluation.priors import (
    SADE_RATIOS,
    PriorShift,
    evaluate_priors,
    parse_test_prior,
    prior_corrected,
    shifted_indices,
    sweep,
    sweepable,
)

TRAIN = [5, 100, 20, 50, 1]  # training ranks: class 1 first, then 3, 2, 0, 4


def balanced_labels(per_class=40, classes=5, seed=0):
    labels = np.repeat(np.arange(classes), per_class)
    np.random.default_rng(seed).shuffle(labels)
    return labels


@pytest.mark.parametrize("ratio", SADE_RATIOS)
def test_forward_and_backward_sets_have_their_expected_class_counts(ratio):
    labels = balanced_labels(per_class=100)  # as CIFAR-100's test set
    rank = {1: 0, 3: 1, 2: 2, 0: 3, 4: 4}
    for kind in ("forward", "backward"):
        indices = shifted_indices(labels, TRAIN, PriorShift(kind, ratio))
        assert len(set(indices.tolist())) == len(indices)  # each image at most once: a subsample, no reweighting
        got = np.bincount(labels[indices], minlength=5).tolist()
        # the r-th most frequent training class gets int(100 * (1/R)^(r/(C-1))) images (forward), the reverse
        # order backward: the most frequent training class gets the fewest
        r_of = rank if kind == "forward" else {c: 4 - r for c, r in rank.items()}
        want = [int(100 * (1 / ratio) ** (r_of[c] / 4)) for c in range(5)]
        assert got == want, kind
        assert max(want) == 100 and max(want) / min(want) == pytest.approx(ratio, rel=0.1)


def test_uniform_keeps_a_balanced_set_whole_and_balances_an_unbalanced_one():
    labels = balanced_labels()
    assert sorted(shifted_indices(labels, TRAIN, PriorShift("uniform", 1)).tolist()) == list(range(len(labels)))
    unbalanced = np.concatenate([labels, np.array([2, 2, 2])])
    counts = np.bincount(unbalanced[shifted_indices(unbalanced, TRAIN, PriorShift("uniform", 1))])
    assert counts.tolist() == [40] * 5


def test_a_class_s_images_are_sadelike_shuffled_class_by_class_with_seed_0():
    # CIFAR-LT: training counts fall with the class index, so rank = index; SADE's IMBALANCECIFAR selects with
    # np.random.seed(0), then class by class a shuffle of the class's indices and its first n.
    labels = balanced_labels(per_class=30, classes=4, seed=5)
    train = [400, 120, 30, 4]
    state = np.random.get_state()
    try:
        np.random.seed(0)
        want = []
        for c, n in enumerate([int(30 * 0.1 ** (c / 3.0)) for c in range(4)]):
            idx = np.where(labels == c)[0]
            np.random.shuffle(idx)
            want += idx[:n].tolist()
    finally:
        np.random.set_state(state)
    assert shifted_indices(labels, train, PriorShift("forward", 10)).tolist() == want


def test_parsing_and_its_one_sentence_refusals():
    assert parse_test_prior("uniform") == [PriorShift("uniform", 1)]
    assert parse_test_prior("forward:50") == [PriorShift("forward", 50)]
    assert parse_test_prior("backward:2.5") == [PriorShift("backward", 2.5)]
    names = [p.name for p in parse_test_prior("sweep")]
    assert names == ["forward50", "forward25", "forward10", "forward5", "forward2", "uniform",
                     "backward2", "backward5", "backward10", "backward25", "backward50"]  # fmt: skip
    for bad in ("sideways:5", "forward", "forward:0.5", "forward:x", "backward:inf"):
        with pytest.raises(UserError, match="--test-prior"):
            parse_test_prior(bad)
    with pytest.raises(UserError, match="leaves a class"):
        shifted_indices(balanced_labels(per_class=4), TRAIN, PriorShift("forward", 50))


def test_prior_corrected_logits_add_the_log_test_prior():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    got = prior_corrected(logits, [10, 30, 60])
    assert torch.allclose(got, logits + torch.tensor([0.1, 0.3, 0.6]).log())


def test_a_model_that_carries_the_training_prior_has_it_taken_out_first():
    # A cross-entropy model's logits carry log p_train: told the test prior, they become logits - log p_train +
    # log p_test; after --logit-adjust tau the weight of the training prior left in them is tau - 1.
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    train, test = [60, 30, 10], [10, 30, 60]
    log_train, log_test = torch.tensor([0.6, 0.3, 0.1]).log(), torch.tensor([0.1, 0.3, 0.6]).log()
    assert torch.allclose(prior_corrected(logits, test, train, -1.0), logits - log_train + log_test)
    assert torch.allclose(prior_corrected(logits, test, train, 0.0), logits + log_test)
    # the options of a run carry the method's declaration: BS is balanced, CE is not
    from ltcl.config import load_config
    from ltcl.methods import balanced_logits

    digits = Path(__file__).resolve().parents[2] / "configs" / "digits_lt.yaml"
    assert balanced_logits(load_config(digits, ["loss.objective=bs+acl"]))
    assert not balanced_logits(load_config(digits, ["loss.objective=ce"]))


def test_telling_the_model_the_prior_helps_on_a_forward_set():
    # A model that is balanced (uniform-prior logits) but unsure: on a forward set the prior decides.
    labels = balanced_labels(per_class=50)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(labels), 5, generator=g)
    logits[torch.arange(len(labels)), torch.as_tensor(labels)] += 0.5
    rows = evaluate_priors(logits, torch.as_tensor(labels), TRAIN, [PriorShift("forward", 50)], many=30, few=10)
    row = rows[0]
    assert row["prior"] == "forward50" and row["images"] == sum(int(50 * 0.02 ** (r / 4)) for r in range(5))
    assert row["told_prior"]["all"] > row["as_evaluated"]["all"]


def test_a_sweep_leaves_out_the_ratios_a_small_split_cannot_hold_and_says_so():
    labels = balanced_labels(per_class=20)  # R = 25 and 50 would leave a class without images
    kept, left_out = sweepable(sweep(), labels, TRAIN)
    assert [p.name for p in kept] == ["forward10", "forward5", "forward2", "uniform", "backward2", "backward5",
                                      "backward10"]  # fmt: skip
    assert left_out == ["forward50", "forward25", "backward25", "backward50"]
    assert sweepable(sweep(), balanced_labels(per_class=50), TRAIN) == (sweep(), [])
