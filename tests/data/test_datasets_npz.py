"""Packed CIFAR .npz files that are damaged: truncated, garbage, pickled objects, corrupt JPEGs inside; each is one
sentence naming the file, never numpy's ``allow_pickle`` advice; ``data.skip_corrupt`` drops undecodable images."""

import dataclasses
import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltcl.config import DataConfig
from ltcl.data.datasets import ArrayDataset, build_split, check_images

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cfg(path: Path, **values) -> DataConfig:
    return dataclasses.replace(DataConfig(dataset="cifar10_lt", root=str(path)), **values)


def _jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _packed(path: Path, damage: dict | None = None, per_class: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A JPEG-packed file like the shared one (classes in blocks); ``damage``: {image index: its new bytes}.
    Returns the train labels and the decoded reference images (uint8 (N, 32, 32, 3))."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), per_class)
    pixels = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    files = [_jpeg(p) for p in pixels]
    reference = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in files])
    for i, data in (damage or {}).items():
        files[i] = data
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in files])]).astype(np.int64)
    blob = np.frombuffer(b"".join(files), dtype=np.uint8)
    np.savez(
        path,
        jpeg_train=blob,
        offsets_train=offsets,
        y_train=labels,
        jpeg_test=blob,
        offsets_test=offsets,
        y_test=labels,
    )
    return labels, reference


def _one_sentence(message: str, path: Path) -> None:
    assert str(path) in message and message.endswith(".") and "\n" not in message
    for leak in ("allow_pickle", "pickle.load", "BytesIO", " 0x", "Traceback"):
        assert leak not in message


def test_a_clean_packed_file_decodes_and_check_images_has_nothing_to_report(tmp_path):
    labels, reference = _packed(tmp_path / "ok.npz")
    test = build_split(cfg(tmp_path / "ok.npz"), "test")
    np.testing.assert_array_equal(test.images, reference)
    np.testing.assert_array_equal(test.targets, labels)
    assert test.problems == [] and test.classes == NAMES
    done = []
    assert check_images(test, progress=done.append) == [] and done == [len(test)]


@pytest.mark.parametrize("cut", [0, 30, 0.5, -10])
def test_truncated_files(tmp_path, cut):
    _packed(tmp_path / "ok.npz")
    whole = (tmp_path / "ok.npz").read_bytes()
    keep = int(len(whole) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(whole) + cut)
    path = tmp_path / "cut.npz"
    path.write_bytes(whole[:keep])
    with pytest.raises(ValueError) as error:
        build_split(cfg(path), "train")
    assert str(error.value) == (
        f"{path} is not a readable .npz archive (it is truncated, damaged or another kind of file)."
    )


def test_garbage_and_other_files(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"hello, this is not an archive at all" * 20)  # numpy would call this a pickle
    npy = tmp_path / "array.npz"
    with npy.open("wb") as f:
        np.save(f, np.zeros((2, 32, 32, 3), np.uint8))
    for path in (garbage, npy):
        with pytest.raises(ValueError, match="is not a readable .npz archive") as error:
            build_split(cfg(path), "test")
        _one_sentence(str(error.value), path)


def test_damaged_member_of_an_archive(tmp_path):
    _packed(tmp_path / "ok.npz")
    data = bytearray((tmp_path / "ok.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "ok.npz") as archive:
        info = archive.getinfo("y_train.npy")
    data[info.header_offset : info.header_offset + 40] = b"\0" * 40  # the member's local header
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"damaged.npz is damaged and cannot be read \(") as error:
        build_split(cfg(path), "train")
    _one_sentence(str(error.value), path)


def test_pickled_objects_are_named_never_loaded(tmp_path):
    path = tmp_path / "objects.npz"
    x = np.empty(2, dtype=object)
    x[:] = [np.zeros((32, 32, 3), np.uint8), "a"]
    np.savez(path, x_train=x, y_train=np.arange(2))
    with pytest.raises(ValueError) as error:
        build_split(cfg(path), "train")
    message = str(error.value)
    assert message.startswith(f"{path} holds pickled Python objects (array x_train), which ltcl does not load")
    _one_sentence(message, path)


@pytest.mark.parametrize(
    "damage, reason",
    [(b"not a jpeg at all", "not an image format Pillow can read"), ("truncate", "truncated file")],
)
def test_a_corrupt_packed_image_is_named_by_index_split_and_class(tmp_path, damage, reason):
    path = tmp_path / "bad.npz"
    if damage == "truncate":
        damage = _jpeg(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))[:300]
    _packed(path, {10: damage})  # image 10 is class 3, cat
    with pytest.raises(ValueError) as error:
        build_split(cfg(path), "test")
    message = str(error.value)
    assert message.startswith(f"packed image 10 (test, cat) of {path} cannot be decoded (")
    assert reason.lower() in message.lower()
    assert message.endswith("; set data.skip_corrupt=true to leave such images out.")
    _one_sentence(message, path)


def test_skip_corrupt_drops_undecodable_packed_images(tmp_path):
    path = tmp_path / "bad.npz"
    labels, reference = _packed(path, {7: b"junk", 11: b"more junk"})  # bird, cat
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw warning: the run prints one line per image left out
        test = build_split(cfg(path, skip_corrupt=True), "test")
    kept = np.setdiff1d(np.arange(30), [7, 11])
    assert isinstance(test, ArrayDataset) and len(test) == 28
    np.testing.assert_array_equal(test.images, reference[kept])
    np.testing.assert_array_equal(test.targets, labels[kept])
    assert [p for p, _ in test.problems] == [
        f"packed image {i} ({c}) of {path}" for i, c in ((7, "test, bird"), (11, "test, cat"))
    ]
    problems = check_images(test)
    assert [p for p, _ in problems] == [p for p, _ in test.problems]
    assert all(
        r.startswith("cannot be decoded (") and r.endswith("; left out (data.skip_corrupt)") for _, r in problems
    )
    # Training: the long-tailed subset is drawn first, then its undecodable images are dropped.
    train = build_split(cfg(path, skip_corrupt=True), "train")
    assert train.class_counts() == [3, 3, 2, 2, 3, 3, 3, 3, 3, 3]
