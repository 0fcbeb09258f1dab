"""Class-folder trees on real files: every image by default, a long-tailed subset that follows the classes' own
sizes, one evaluation split (test/ or val/), classes missing from an evaluation split, and the errors."""

import dataclasses
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

from ltcl.config import DataConfig
from ltcl.data.datasets import build_split
from ltcl.data.longtail import longtail_counts
from tests.data.ldam_reference import ldam_gen_imbalanced_indices


def cfg(**values) -> DataConfig:
    return dataclasses.replace(DataConfig(dataset="image_folder"), **values)


def _write(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for j in range(count):
        suffix = ".png" if j % 2 else ".JPG"
        Image.new("RGB", (6, 6), (10 * j % 256, 0, 0)).save(
            folder / f"{j:03d}{suffix}", format="PNG" if j % 2 else "JPEG"
        )


@pytest.fixture
def folder_tree(tmp_path):
    sizes = {"cat": 12, "ant": 8, "dog": 5, "bee": 3}
    for split, per in (("train", None), ("test", 2)):
        for name, size in sizes.items():
            _write(tmp_path / split / name, per or size)
            (tmp_path / split / name / "notes.txt").write_text("not an image")
    (tmp_path / "train" / ".cache").mkdir()
    (tmp_path / "train" / "cat" / "._000.JPG").write_bytes(b"macOS resource fork, not an image")
    return tmp_path, sizes


def test_image_folder(folder_tree):
    root, sizes = folder_tree
    classes = sorted(sizes)
    full = build_split(cfg(root=str(root)), "train")  # the default factor, 1, keeps every image
    assert full.classes == classes and full.class_counts() == [sizes[c] for c in classes]
    assert build_split(cfg(root=str(root)), "val") is None  # test/ is the evaluation split
    test = build_split(cfg(root=str(root)), "test")
    assert test.class_counts() == [2, 2, 2, 2]
    image, label = test[2]
    assert image.mode == "RGB" and label == 1 and Path(test.paths[2]).parent.name == "bee"
    assert [Path(p).name for p in test.paths[:2]] == ["000.JPG", "001.png"]


def test_longtail_profile_follows_the_class_sizes(folder_tree):
    root, sizes = folder_tree  # alphabetical: ant 8, bee 3, cat 12, dog 5
    lt = build_split(cfg(root=str(root), imbalance_factor=4), "train")
    # By size: cat 12 -> 12, ant 8 -> 7, dog 5 -> 4, bee 3 -> 3 (its target, 3, is all it has).
    targets = longtail_counts(4, 12, 4)
    assert targets == [12, 7, 4, 3]
    counts = [7, 3, 12, 4]
    assert lt.class_counts() == counts and lt.classes == ["ant", "bee", "cat", "dog"]
    full = build_split(cfg(root=str(root)), "train")
    expected = ldam_gen_imbalanced_indices(full.targets, counts)
    assert lt.paths.tolist() == full.paths[expected].tolist()


def test_a_default_factor_keeps_a_users_classes_and_an_explicit_one_ranks_them_by_size(tmp_path):
    """ant 150, bee 20, cat 200, dog 5: the old rule (factor 100 by index) kept 150/20/9/2, throwing away 191 of
    cat's 200 images because cat sorts third; now the default keeps everything, and factor 100 ranks by size."""
    sizes = {"ant": 150, "bee": 20, "cat": 200, "dog": 5}
    for name, size in sizes.items():
        _write(tmp_path / "train" / name, size)
        _write(tmp_path / "val" / name, 1)
    assert DataConfig().imbalance_factor == 1
    assert build_split(cfg(root=str(tmp_path)), "train").class_counts() == [150, 20, 200, 5]
    lt = build_split(cfg(root=str(tmp_path), imbalance_factor=100), "train")
    assert longtail_counts(4, 200, 100) == [200, 43, 9, 2]
    assert lt.class_counts() == [43, 9, 200, 2]  # cat (largest) 200, ant 43, bee 9, dog 2
    assert lt.class_counts() != [150, 20, 9, 2]


def test_evaluation_split_is_test_or_val(folder_tree):
    root, _ = folder_tree
    both = root / "val"
    shutil.copytree(root / "test", both)
    assert len(build_split(cfg(root=str(root)), "val")) == len(build_split(cfg(root=str(root)), "test")) == 8
    shutil.rmtree(root / "test")
    assert build_split(cfg(root=str(root)), "test") is None  # val/ alone is the evaluation split
    assert len(build_split(cfg(root=str(root)), "val")) == 8
    shutil.rmtree(both)
    message = f"{root} holds neither test/ nor val/; an image_folder dataset needs an evaluation split"
    for split in ("train", "val", "test"):
        with pytest.raises(ValueError, match=f"^{message}"):
            build_split(cfg(root=str(root)), split)


def test_a_class_missing_from_the_evaluation_split_has_no_images_there(folder_tree):
    root, _ = folder_tree
    shutil.rmtree(root / "test" / "bee")  # no folder (this raised a bare [Errno 2] before)
    for path in (root / "test" / "dog").iterdir():  # an empty folder
        path.unlink()
    test = build_split(cfg(root=str(root)), "test")
    assert test.classes == ["ant", "bee", "cat", "dog"] and test.class_counts() == [2, 0, 2, 0]
    assert sorted(set(test.targets.tolist())) == [0, 2]


def test_image_folder_errors(folder_tree, tmp_path_factory):
    root, _ = folder_tree
    with pytest.raises(FileNotFoundError, match=f"^{root}/train/train does not exist"):
        build_split(cfg(root=str(root / "train")), "test")  # no train/ under it either
    (root / "test" / "cow").mkdir()
    with pytest.raises(
        ValueError, match=f"^{root}/test/cow names a class that is not among the class folders of {root}/train"
    ):
        build_split(cfg(root=str(root)), "test")
    (root / "test" / "cow").rmdir()
    (root / "train" / "eel").mkdir()
    with pytest.raises(ValueError, match=f"^{root}/train/eel holds no images"):
        build_split(cfg(root=str(root)), "train")
    (root / "train" / "eel").rmdir()
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match=f"^{empty}/train does not exist"):
        build_split(cfg(root=str(empty)), "train")
    (empty / "train").mkdir()
    with pytest.raises(ValueError, match=f"^{empty}/train holds no class folders"):
        build_split(cfg(root=str(empty)), "train")
    with pytest.raises(ValueError, match="data.val_per_class applies to cifar10_lt, cifar100_lt, digits_lt"):
        build_split(cfg(root=str(root), val_per_class=5), "train")
    with pytest.raises(ValueError, match="imbalance_factor 50 leaves a class with no image"):
        build_split(cfg(root=str(root), imbalance_factor=50), "train")


def test_deleted_after_listing_is_one_error(folder_tree, monkeypatch):
    """Folders list only files that exist; a file gone between listing and the check is still reported."""
    root, _ = folder_tree
    import ltcl.data.datasets.folder as folder

    listed = folder._images
    monkeypatch.setattr(folder, "_images", lambda path: listed(path) + [str(path / "gone.jpg")])
    with pytest.raises(ValueError, match=rf"^4 of 12 images of the test/ folder are missing under {root}, first: "):
        build_split(cfg(root=str(root)), "test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw warning: the run prints one line per image left out
        kept = build_split(cfg(root=str(root), skip_corrupt=True), "test")
    assert kept.class_counts() == [2, 2, 2, 2] and len(kept.problems) == 4
    assert all(where.endswith("gone.jpg") and reason == "missing" for where, reason in kept.problems)
