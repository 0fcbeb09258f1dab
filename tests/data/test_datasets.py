"""Datasets on real files: official-format CIFAR pickles and .npz copies written here, the shared CIFAR-10
file, the digits, and build_split's checks of the settings. Split lists, folders, damaged .npz files, validation
splits and portable evaluation have their own test_datasets_*.py files."""

import dataclasses
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from ltcl.config import DataConfig
from ltcl.data.datasets import build_split
from ltcl.data.longtail import longtail_counts, shot_groups
from tests.conftest import shared_file
from tests.data.ldam_reference import ldam_gen_imbalanced_indices

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cfg(**values) -> DataConfig:
    return dataclasses.replace(DataConfig(), **values)


# ----------------------------------------------------------------------------------------------------------
# CIFAR: official layout written here in the exact pickle format, and the same images as .npz


def _pickle(path: Path, entry: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(entry, f, protocol=2)


def _planes(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> the official (N, 3072) rows: all red, then all green, then all blue."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _write_official(root: Path, kind: str, train, test, names) -> None:
    (x_train, y_train), (x_test, y_test) = train, test
    if kind == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for b, part in enumerate(np.array_split(np.arange(len(y_train)), 5), 1):
            _pickle(
                folder / f"data_batch_{b}",
                {
                    "batch_label": f"training batch {b} of 5",
                    "labels": y_train[part].tolist(),
                    "data": _planes(x_train[part]),
                    "filenames": [f"{i}.png" for i in part],
                },
            )
        _pickle(
            folder / "test_batch",
            {
                "batch_label": "testing batch 1 of 1",
                "labels": y_test.tolist(),
                "data": _planes(x_test),
                "filenames": [],
            },
        )
        _pickle(folder / "batches.meta", {"num_cases_per_batch": 10000, "label_names": names, "num_vis": 3072})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for name, (x, y) in {"train": train, "test": test}.items():
            _pickle(
                folder / name,
                {
                    "filenames": [],
                    "batch_label": name,
                    "fine_labels": y.tolist(),
                    "coarse_labels": (y // 5).tolist(),
                    "data": _planes(x),
                },
            )
        _pickle(folder / "meta", {"fine_label_names": names, "coarse_label_names": [str(i) for i in range(20)]})


def _random_cifar(num_classes: int, per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.int64)
    return rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8), labels


@pytest.fixture(scope="module", params=[("cifar10", 10, 7), ("cifar100", 100, 3)], ids=["c10", "c100"])
def tiny_cifar(request, tmp_path_factory):
    kind, num_classes, per_class = request.param
    root = tmp_path_factory.mktemp(kind)
    train, test = _random_cifar(num_classes, per_class, 0), _random_cifar(num_classes, 2, 1)
    names = [f"{kind}_class_{i}" for i in range(num_classes)]
    _write_official(root / "official", kind, train, test, names)
    # The .npz copy is sorted by class (keeping the official order inside a class), like the shared file.
    order = np.argsort(train[1], kind="stable")
    np.savez(root / "raw.npz", x_train=train[0][order], y_train=train[1][order], x_test=test[0], y_test=test[1])
    np.savez(
        root / "named.npz",
        x_train=train[0],
        y_train=train[1],
        x_test=test[0],
        y_test=test[1],
        class_names=np.array(names),
    )
    return dict(root=root, dataset=f"{kind}_lt", train=train, test=test, names=names, per_class=per_class)


@pytest.mark.parametrize("factor, profile", [(1, "exp"), (3, "exp"), (3, "step")])
def test_official_layout_and_npz_select_the_same_images(tiny_cifar, factor, profile):
    t = tiny_cifar
    folder = t["root"] / "official"
    base = next(folder.iterdir())
    sources = [
        folder,
        base,
        t["root"] / "raw.npz",
    ]  # the folder holding the official one, the folder itself, npz
    built = [
        build_split(
            cfg(dataset=t["dataset"], root=str(s), imbalance_factor=factor, imbalance_profile=profile),
            "train",
        )
        for s in sources
    ]
    x, y = t["train"]
    counts = longtail_counts(len(t["names"]), t["per_class"], factor, profile)
    expected = ldam_gen_imbalanced_indices(y, counts)
    for ds in built:
        np.testing.assert_array_equal(ds.images, x[expected])
        np.testing.assert_array_equal(ds.targets, y[expected])
        assert ds.targets.dtype == np.int64 and ds.images.dtype == np.uint8
        assert ds.class_counts() == counts
    assert built[0].classes == built[1].classes == t["names"]  # from the official meta file


def test_cifar_test_split_and_items(tiny_cifar):
    t = tiny_cifar
    official = build_split(cfg(dataset=t["dataset"], root=str(t["root"] / "official")), "test")
    named = build_split(cfg(dataset=t["dataset"], root=str(t["root"] / "named.npz")), "test")
    for ds in (official, named):
        np.testing.assert_array_equal(ds.images, t["test"][0])
        assert ds.classes == t["names"] and ds.num_classes == len(t["names"])
        assert ds.class_counts() == [2] * len(t["names"])
    image, label = official[3]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and type(label) is int
    assert label == t["test"][1][3]
    np.testing.assert_array_equal(np.asarray(image), t["test"][0][3])
    official.transform = transforms.Compose([transforms.PILToTensor()])
    tensor, _ = official[3]
    np.testing.assert_array_equal(tensor.permute(1, 2, 0).numpy(), t["test"][0][3])
    assert build_split(cfg(dataset=t["dataset"], root=str(t["root"] / "raw.npz")), "val") is None


def test_npz_without_names_uses_the_official_ones(tiny_cifar):
    ds = build_split(cfg(dataset=tiny_cifar["dataset"], root=str(tiny_cifar["root"] / "raw.npz")), "test")
    if tiny_cifar["dataset"] == "cifar10_lt":
        assert ds.classes == CIFAR10_NAMES
    else:
        assert len(ds.classes) == 100 and ds.classes == sorted(ds.classes)
        assert ds.classes[:3] == ["apple", "aquarium_fish", "baby"] and ds.classes[-1] == "worm"


def test_cifar_errors(tmp_path):
    with pytest.raises(ValueError, match="data.root is empty"):
        build_split(cfg(dataset="cifar10_lt", root=""), "train")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/nothing.npz does not exist"):
        build_split(cfg(dataset="cifar10_lt", root=str(tmp_path / "nothing.npz")), "train")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} holds no cifar-100-python/.*data.download=true"):
        build_split(cfg(dataset="cifar100_lt", root=str(tmp_path)), "test")
    x, y = _random_cifar(10, 2, 0)
    np.savez(tmp_path / "nolabels.npz", x_train=x)
    with pytest.raises(ValueError, match="nolabels.npz has no array y_train"):
        build_split(cfg(dataset="cifar10_lt", root=str(tmp_path / "nolabels.npz")), "train")
    np.savez(tmp_path / "noimages.npz", y_test=y)
    with pytest.raises(ValueError, match="noimages.npz has neither x_test nor jpeg_test"):
        build_split(cfg(dataset="cifar10_lt", root=str(tmp_path / "noimages.npz")), "test")
    np.savez(tmp_path / "grey.npz", x_test=x[..., 0], y_test=y)
    with pytest.raises(ValueError, match=r"x_test must be uint8 \(N, H, W, 3\)"):
        build_split(cfg(dataset="cifar10_lt", root=str(tmp_path / "grey.npz")), "test")
    np.savez(tmp_path / "big.npz", x_test=x, y_test=y + 5)
    with pytest.raises(ValueError, match=r"big.npz: labels must lie in \[0, 10\)"):
        build_split(cfg(dataset="cifar10_lt", root=str(tmp_path / "big.npz")), "test")
    np.savez(tmp_path / "names.npz", x_test=x, y_test=y, class_names=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="class_names holds 2 names; expected 10"):
        build_split(cfg(dataset="cifar10_lt", root=str(tmp_path / "names.npz")), "test")
    _write_official(tmp_path / "broken", "cifar10", (x, y), (x, y), CIFAR10_NAMES)
    (tmp_path / "broken" / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="broken/cifar-10-batches-py cannot be read"):
        build_split(cfg(dataset="cifar10_lt", root=str(tmp_path / "broken")), "train")


# ----------------------------------------------------------------------------------------------------------
# The shared CIFAR-10 file (JPEG-packed): decoded once for the module


@pytest.fixture(scope="module")
def shared_cifar10():
    path = shared_file("cifar10_jpeg.npz")
    config = cfg(dataset="cifar10_lt", root=str(path), imbalance_factor=100)
    return path, build_split(config, "train"), build_split(config, "test")


def test_shared_cifar10_if100(shared_cifar10):
    path, train, test = shared_cifar10
    assert len(train) == 12406 and len(test) == 10000
    assert train.class_counts() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert test.class_counts() == [1000] * 10
    assert train.classes == test.classes == CIFAR10_NAMES
    assert train.images.shape == (12406, 32, 32, 3) and train.images.dtype == np.uint8
    with np.load(path) as z:
        blob, offsets, y_train = z["jpeg_train"], z["offsets_train"], z["y_train"]
        expected = ldam_gen_imbalanced_indices(y_train, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
        np.testing.assert_array_equal(train.targets, y_train[expected])
        for position in np.random.default_rng(0).choice(len(train), 20, replace=False):
            i = expected[position]
            reference = Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")
            np.testing.assert_array_equal(train.images[position], np.asarray(reference))
            image, label = train[position]
            assert label == y_train[i] and image.mode == "RGB" and image.size == (32, 32)
        i = 9999
        reference = Image.open(io.BytesIO(z["jpeg_test"][z["offsets_test"][i] : z["offsets_test"][i + 1]].tobytes()))
        np.testing.assert_array_equal(test.images[i], np.asarray(reference.convert("RGB")))


# ----------------------------------------------------------------------------------------------------------
# The bundled digits


def test_digits_lt():
    from sklearn.datasets import load_digits

    digits = load_digits()
    config = cfg(dataset="digits_lt", imbalance_factor=10)
    train, test = build_split(config, "train"), build_split(config, "test")
    assert build_split(config, "val") is None
    assert test.class_counts() == [50] * 10 and train.classes == [str(c) for c in range(10)]
    pool_sizes = np.bincount(digits.target) - 50
    counts = train.class_counts()
    assert counts == longtail_counts(10, int(pool_sizes.min()), 10) and counts[0] > 100 and counts[-1] >= 10
    assert (shot_groups(counts).bincount(minlength=3) > 0).all()
    # Independent reference: the last 50 of each class, upsampled by PIL's bilinear filter.
    test_idx = np.concatenate([np.flatnonzero(digits.target == c)[-50:] for c in range(10)])
    test_idx.sort()
    pool_idx = np.setdiff1d(np.arange(len(digits.target)), test_idx)
    train_idx = pool_idx[ldam_gen_imbalanced_indices(digits.target[pool_idx], counts)]
    for ds, idx in ((test, test_idx), (train, train_idx)):
        np.testing.assert_array_equal(ds.targets, digits.target[idx])
        assert ds.images.shape == (len(idx), 32, 32, 3) and ds.images.dtype == np.uint8
        for k in np.random.default_rng(0).choice(len(idx), 15, replace=False):
            grey = Image.fromarray((digits.images[idx[k]] * 255 / 16).astype(np.float32), mode="F")
            reference = np.asarray(grey.resize((32, 32), Image.BILINEAR))
            for channel in range(3):
                np.testing.assert_allclose(ds.images[k, :, :, channel], reference, atol=1.01)
    image, label = train[0]
    assert image.mode == "RGB" and label == 0 and image.size == (32, 32)


# ----------------------------------------------------------------------------------------------------------


def test_build_split_rejects_bad_settings():
    with pytest.raises(ValueError, match="'data.dataset' expects one of digits_lt, cifar10_lt, .*, got 'mnist'"):
        build_split(cfg(dataset="mnist"), "train")
    with pytest.raises(ValueError, match="split must be one of train, val, test, got 'dev'"):
        build_split(cfg(), "dev")
    with pytest.raises(ValueError, match="'data.imbalance_factor' expects a number >= 1, got 0.5"):
        build_split(cfg(imbalance_factor=0.5), "train")
    with pytest.raises(ValueError, match="'data.imbalance_profile' expects one of exp, step, got 'linear'"):
        build_split(cfg(imbalance_profile="linear"), "train")
    with pytest.raises(ValueError, match="'data.num_classes' expects an integer >= 0"):
        build_split(cfg(dataset="places_lt", num_classes=-1), "train")
