"""Long-tail mechanics against LDAM-DRW's own rules, re-implemented here with the global NumPy RNG."""

import typing

import numpy as np
import pytest
import torch

from ltcl.config.schema import ImbalanceProfile
from ltcl.data.longtail import (
    PROFILES,
    longtail_counts,
    longtail_counts_by_size,
    select_longtail_indices,
    select_longtail_split,
    shot_groups,
)
from tests.data.ldam_reference import ldam_class_permutations, ldam_gen_imbalanced_indices, ldam_img_num_per_cls


@pytest.mark.parametrize(
    "num_classes, max_count, expected",
    [(100, 500, {100: 10847, 50: 12608, 10: 19573}), (10, 5000, {100: 12406, 50: 13996, 10: 20431})],
)
def test_published_subset_sizes(num_classes, max_count, expected):
    for factor, total in expected.items():
        counts = longtail_counts(num_classes, max_count, factor)
        assert sum(counts) == total
        assert counts[0] == max_count and counts[-1] == max_count // factor


def test_cifar10_if100_counts_are_ldams():
    assert longtail_counts(10, 5000, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.parametrize("profile", ["exp", "step"])
@pytest.mark.parametrize(
    "num_classes, max_count, factor",
    [(c, m, f) for c, m in [(10, 5000), (100, 500), (7, 37), (2, 9)] for f in (1, 2.5, 10, 50, 100) if m >= f],
)
def test_counts_match_ldam(profile, num_classes, max_count, factor):
    ours = longtail_counts(num_classes, max_count, factor, profile)
    if profile == "step" and num_classes % 2:  # LDAM drops the middle class of an odd count; we keep it
        assert ours[: num_classes // 2] == [max_count] * (num_classes // 2)
        assert set(ours[num_classes // 2 :]) == {int(max_count * (1 / factor))}
    else:
        assert ours == ldam_img_num_per_cls(num_classes, float(max_count), profile, 1 / factor)


def test_factor_one_keeps_everything_and_one_class_is_allowed():
    assert longtail_counts(5, 40, 1) == [40] * 5
    assert longtail_counts(5, 40, 1, "step") == [40] * 5
    assert longtail_counts(1, 40, 100) == [40]


def test_step_profile():
    assert longtail_counts(10, 5000, 100, "step") == [5000] * 5 + [50] * 5


@pytest.mark.parametrize(
    "args, name",
    [
        ((0, 10, 2), "num_classes"),
        ((2.5, 10, 2), "num_classes"),
        ((3, 0, 2), "max_count"),
        ((3, 10, 0.5), "imbalance_factor"),
        ((3, 10, float("nan")), "imbalance_factor"),
        ((3, 10, 2, "linear"), "profile"),
        ((3, 10, 20), "imbalance_factor 20"),
    ],
)
def test_bad_arguments(args, name):
    with pytest.raises(ValueError, match=name):
        longtail_counts(*args)


@pytest.mark.parametrize(
    "num_classes, per_class, factor",
    [(10, 5000, 100), (10, 5000, 10), (10, 5000, 1), (100, 500, 100), (100, 500, 10), (10, 6, 5), (10, 6, 1)],
)
def test_selection_equals_ldam_global_seeding(num_classes, per_class, factor):
    rng = np.random.default_rng(num_classes)
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))  # official order is interleaved
    counts = longtail_counts(num_classes, per_class, factor)
    before = np.random.get_state()
    ours = select_longtail_indices(labels, counts)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    reference = ldam_gen_imbalanced_indices(labels, counts)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, reference)
    np.testing.assert_array_equal(np.bincount(labels[ours], minlength=num_classes), counts)


def test_seed_changes_the_selection_like_ldams_rand_number():
    labels = np.repeat(np.arange(4), 50)
    counts = longtail_counts(4, 50, 10)
    np.testing.assert_array_equal(
        select_longtail_indices(labels, counts, seed=3), ldam_gen_imbalanced_indices(labels, counts, seed=3)
    )
    assert not np.array_equal(select_longtail_indices(labels, counts, seed=3), select_longtail_indices(labels, counts))


def test_same_within_class_positions_on_any_order():
    """A class-sorted copy (like the shared .npz) and the interleaved official order keep the same images."""
    rng = np.random.default_rng(1)
    official = rng.permutation(np.repeat(np.arange(10), 40))
    sorted_copy = np.argsort(official, kind="stable")  # sorted_copy[j] = official index of copy item j
    counts = longtail_counts(10, 40, 10)
    from_official = select_longtail_indices(official, counts)
    from_copy = sorted_copy[select_longtail_indices(official[sorted_copy], counts)]
    np.testing.assert_array_equal(from_official, from_copy)


def test_small_classes_keep_what_they_have_and_labels_are_checked():
    labels = np.array([0, 0, 0, 1, 2, 2])
    chosen = select_longtail_indices(labels, [2, 5, 1])
    assert np.bincount(labels[chosen]).tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        select_longtail_indices(labels, [2, 5])
    with pytest.raises(ValueError, match="counts"):
        select_longtail_indices(labels, [2, -1, 1])
    with pytest.raises(ValueError, match="1-D integer"):
        select_longtail_indices(labels.astype(float), [2, 5, 1])


def test_shot_group_boundaries():
    groups = shot_groups([19, 20, 21, 99, 100, 101, 5000, 0])
    assert groups.dtype == torch.long
    assert groups.tolist() == [2, 1, 1, 1, 1, 0, 0, 2]
    assert shot_groups(torch.tensor([10, 30, 60]), many=50, few=10).tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="few threshold"):
        shot_groups([1, 2], many=10, few=20)


@pytest.mark.parametrize("factor, sizes", [(100, (35, 35, 30)), (50, (41, 41, 18)), (10, (69, 31, 0))])
def test_cifar100_shot_group_sizes(factor, sizes):
    groups = shot_groups(longtail_counts(100, 500, factor))
    assert tuple(torch.bincount(groups, minlength=3).tolist()) == sizes


@pytest.mark.parametrize("val_per_class", [0, 1, 7, 10_000])
@pytest.mark.parametrize("seed", [0, 3])
def test_split_is_ldams_subset_plus_the_next_images(val_per_class, seed):
    labels = np.random.default_rng(5).permutation(np.repeat(np.arange(6), 40))
    counts = longtail_counts(6, 40, 10)
    train, val = select_longtail_split(labels, counts, seed, val_per_class)
    np.testing.assert_array_equal(train, select_longtail_indices(labels, counts, seed))
    np.testing.assert_array_equal(train, ldam_gen_imbalanced_indices(labels, counts, seed))
    permutations = ldam_class_permutations(labels, seed)
    expected = np.concatenate([permutations[c][n : n + val_per_class] for c, n in enumerate(counts)])
    np.testing.assert_array_equal(val, expected)
    assert train.dtype == val.dtype == np.int64 and not np.intersect1d(train, val).size
    assert np.bincount(labels[val], minlength=6).tolist() == [min(val_per_class, 40 - n) for n in counts]


def test_split_arguments_are_checked():
    with pytest.raises(ValueError, match="val_per_class must be an integer >= 0, got -1"):
        select_longtail_split([0, 1], [1, 1], val_per_class=-1)
    with pytest.raises(ValueError, match="val_per_class"):
        select_longtail_split([0, 1], [1, 1], val_per_class=1.5)


def test_counts_by_size_ties_and_caps():
    assert longtail_counts_by_size([5, 9, 9, 2], 1) == [5, 9, 9, 2]
    # Ties by class index: class 1 ranks before class 2.
    assert longtail_counts_by_size([5, 9, 9, 2], 9) == [
        min(5, longtail_counts(4, 9, 9)[2]),
        9,
        longtail_counts(4, 9, 9)[1],
        min(2, longtail_counts(4, 9, 9)[3]),
    ]
    # Never more than a class has: the second-largest class is far smaller than its target.
    assert longtail_counts_by_size([200, 190, 5], 2) == [200, 141, 5]
    assert longtail_counts_by_size([200, 190, 5], 2, "step") == [200, 100, 5]
    with pytest.raises(ValueError, match="sizes"):
        longtail_counts_by_size([3, 0], 2)


def test_profiles_are_the_configs():
    assert PROFILES == typing.get_args(ImbalanceProfile) == ("exp", "step")
