"""Validation splits of CIFAR-LT and digits: up to data.val_per_class images per class from the training images the
long-tailed subset leaves unused (the next ones in LDAM's shuffled order), disjoint from train and test, with the
training subset unchanged."""

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from ltcl.config import DataConfig
from ltcl.data.datasets import build_split, digits_arrays
from ltcl.data.longtail import longtail_counts
from tests.conftest import shared_file
from tests.data.ldam_reference import ldam_class_permutations, ldam_gen_imbalanced_indices

CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def cfg(**values) -> DataConfig:
    return dataclasses.replace(DataConfig(), **values)


@pytest.fixture(scope="module")
def shared_if100_val200():
    config = cfg(
        dataset="cifar10_lt", root=str(shared_file("cifar10_jpeg.npz")), imbalance_factor=100, val_per_class=200
    )
    return config, build_split(config, "train"), build_split(config, "val")


def test_cifar10_lt_if100_validation_split(shared_if100_val200):
    config, train, val = shared_if100_val200
    # The training subset is exactly LDAM's, with or without a validation split.
    assert len(train) == 12406 and train.class_counts() == CIFAR10_IF100
    with np.load(config.root) as z:
        y_train, blob, offsets = z["y_train"], z["jpeg_train"], z["offsets_train"]
    np.testing.assert_array_equal(train.indices, ldam_gen_imbalanced_indices(y_train, CIFAR10_IF100))
    # Validation: 200 per class but the head class, which uses all of its 5,000 images.
    assert val.class_counts() == [0] + [200] * 9 and len(val) == 1800
    assert val.classes == train.classes
    permutations = ldam_class_permutations(y_train)
    expected = np.concatenate([permutations[c][n : n + 200] for c, n in enumerate(CIFAR10_IF100)])
    np.testing.assert_array_equal(val.indices, expected)
    np.testing.assert_array_equal(val.targets, y_train[expected])
    assert not np.intersect1d(train.indices, val.indices).size
    for position in np.random.default_rng(0).choice(len(val), 10, replace=False):
        i = val.indices[position]
        reference = Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")
        np.testing.assert_array_equal(val.images[position], np.asarray(reference))
    # The test set is the separate official one; rebuilding gives the same validation images.
    test = build_split(config, "test")
    assert test.class_counts() == [1000] * 10
    again = build_split(config, "val")
    np.testing.assert_array_equal(again.images, val.images)
    np.testing.assert_array_equal(again.targets, val.targets)


def test_cifar_validation_without_unused_images_is_an_error(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    np.savez(
        tmp_path / "raw.npz",
        x_train=x,
        y_train=np.repeat(np.arange(10), 4),
        x_test=x,
        y_test=np.repeat(np.arange(10), 4),
    )
    base = cfg(dataset="cifar10_lt", root=str(tmp_path / "raw.npz"))
    assert build_split(base, "val") is None  # val_per_class 0: no validation split
    with pytest.raises(ValueError, match=r"^data.val_per_class=2 takes .* data.imbalance_factor=1 leaves none\.$"):
        build_split(dataclasses.replace(base, val_per_class=2), "val")
    val = build_split(dataclasses.replace(base, val_per_class=2, imbalance_factor=4), "val")
    assert val.class_counts() == [min(2, 4 - n) for n in longtail_counts(10, 4, 4)]
    with pytest.raises(ValueError, match="'data.val_per_class' expects an integer >= 0, got -3"):
        build_split(dataclasses.replace(base, val_per_class=-3), "train")


def test_digits_validation_comes_from_the_unused_training_pool():
    _, labels, test_mask = digits_arrays()
    config = cfg(dataset="digits_lt", imbalance_factor=10, val_per_class=20)
    train, val, test = (build_split(config, s) for s in ("train", "val", "test"))
    plain = build_split(dataclasses.replace(config, val_per_class=0), "train")
    np.testing.assert_array_equal(train.images, plain.images)  # training images unchanged, bit for bit
    np.testing.assert_array_equal(train.indices, plain.indices)
    # indices are positions in digits_arrays(): check the three splits are disjoint and val avoids the test set
    assert not np.intersect1d(train.indices, val.indices).size
    assert not np.intersect1d(val.indices, test.indices).size and not test_mask[val.indices].any()
    np.testing.assert_array_equal(np.sort(test.indices), np.flatnonzero(test_mask))
    pool = np.flatnonzero(~test_mask)
    counts = train.class_counts()
    left = np.bincount(labels[pool], minlength=10) - counts
    assert val.class_counts() == np.minimum(20, left).tolist()
    assert val.class_counts()[1:] == [20] * 9  # class 0 is the head: its pool minus the quota leaves a few
    permutations = ldam_class_permutations(labels[pool])
    expected = pool[np.concatenate([permutations[c][n : n + 20] for c, n in enumerate(counts)])]
    np.testing.assert_array_equal(val.indices, expected)
    np.testing.assert_array_equal(val.targets, labels[expected])
    again = build_split(config, "val")
    np.testing.assert_array_equal(again.images, val.images)


def test_val_per_class_is_rejected_where_the_validation_split_comes_from_elsewhere():
    for dataset, source in (("imagenet_lt", "data.val_list"), ("image_folder", "a val/ folder")):
        with pytest.raises(ValueError, match=f"{dataset} takes its validation split from {source}"):
            build_split(cfg(dataset=dataset, val_per_class=5), "val")
