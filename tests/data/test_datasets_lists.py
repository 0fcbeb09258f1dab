"""Split lists on the real files (ImageNet-LT, Places-LT, iNaturalist 2018), filtered to a sample whose images
are written here: labels and names, list errors, the missing-file check, corrupt images and check_images."""

import dataclasses
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltcl.config import DataConfig
from ltcl.data.datasets import build_split, check_images
from tests.conftest import shared_file


def cfg(**values) -> DataConfig:
    return dataclasses.replace(DataConfig(), **values)


def _sample(source: Path, labels: set, per_label: int) -> list[str]:
    kept, seen = [], {}
    for line in source.read_text().splitlines():
        label = int(line.split()[1])
        if label in labels and seen.get(label, 0) < per_label:
            seen[label] = seen.get(label, 0) + 1
            kept.append(line)
    assert set(seen) == labels
    return kept


def _colour(label: int) -> tuple:
    return (label % 256, (label * 7) % 256, 200)


@pytest.fixture(scope="module")
def split_tree(tmp_path_factory):
    """{dataset: (root, {split: list file})} with tiny JPEGs at every sampled path."""
    base = tmp_path_factory.mktemp("lists")
    cb = shared_file("lt_splits") / "classifier-balancing"
    plan = {
        "imagenet_lt": {
            "train": (cb / "ImageNet_LT_val.txt", {0, 1, 2, 999}),
            "test": (cb / "ImageNet_LT_test.txt", {0, 1, 5}),
        },
        "places_lt": {
            "train": (cb / "Places_LT_train.txt", {0, 116, 117, 118, 141, 142}),
            "test": (cb / "Places_LT_test.txt", {116, 117, 300}),
        },
        "inat2018": {"train": (cb / "iNaturalist18_val.txt", {7291, 673, 0, 8141})},
    }
    tree = {}
    for dataset, splits in plan.items():
        root = base / dataset / "images"
        lists = {}
        for split, (source, labels) in splits.items():
            lines = _sample(source, labels, 2)
            lists[split] = base / dataset / f"{split}.txt"
            lists[split].parent.mkdir(parents=True, exist_ok=True)
            lists[split].write_text("\n".join(lines) + "\n")
            for line in lines:
                rel, label = line.rsplit(maxsplit=1)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (9, 7), _colour(int(label))).save(root / rel, quality=95)
        tree[dataset] = (root, lists)
    return tree


def _list_cfg(tree, dataset, **extra) -> DataConfig:
    root, lists = tree[dataset]
    values = dict(dataset=dataset, root=str(root), train_list=str(lists["train"]))
    values["test_list"] = str(lists.get("test", ""))
    return cfg(**{**values, **extra})


def _expected_names(list_file: Path) -> dict:
    names = {}
    for line in list_file.read_text().splitlines():
        rel, label = line.rsplit(maxsplit=1)
        names.setdefault(int(label), rel.split("/")[-2])
    return names


def test_imagenet_lt_lists(split_tree):
    config = _list_cfg(split_tree, "imagenet_lt")
    train, test = build_split(config, "train"), build_split(config, "test")
    assert build_split(config, "val") is None
    assert train.num_classes == test.num_classes == 1000
    lines = split_tree["imagenet_lt"][1]["train"].read_text().split()
    assert train.targets.tolist() == [int(v) for v in lines[1::2]]
    names = _expected_names(split_tree["imagenet_lt"][1]["train"])
    assert names[999].startswith("n") and names[0] == "n01440764"
    for label, name in names.items():
        assert train.classes[label] == test.classes[label] == name
    assert test.classes[5] == "5"  # never in the train list: its label number
    assert test.class_counts()[5] == 2 and sum(train.class_counts()) == 8
    image, label = test[len(test) - 1]
    assert image.mode == "RGB" and label == 5 and image.getpixel((4, 3)) == pytest.approx(_colour(5), abs=3)


def test_places_lt_labels_come_from_the_file(split_tree):
    config = _list_cfg(split_tree, "places_lt", val_list=str(split_tree["places_lt"][1]["test"]))
    train = build_split(config, "train")
    val = build_split(config, "val")
    assert train.num_classes == 365 and len(val) == 6
    # The five classes whose label is not their alphabetical rank keep the file's label.
    assert [train.classes[i] for i in (116, 117, 118, 141, 142)] == [
        "desert_road",
        "desert-sand",
        "desert-vegetation",
        "field_road",
        "field-wild",
    ]
    assert train.classes[0] == "airfield" and val.classes[300] == "300"
    for i in range(len(train)):
        image, label = train[i]
        assert image.getpixel((0, 0)) == pytest.approx(_colour(label), abs=3)
        assert Path(train.paths[i]).parent.name == train.classes[label]


def test_inat_names_are_the_numeric_folders(split_tree):
    train = build_split(_list_cfg(split_tree, "inat2018"), "train")
    assert train.num_classes == 8142
    for label in (7291, 673, 0, 8141):
        assert train.classes[label] == str(label) and train.class_counts()[label] == 2
    assert build_split(_list_cfg(split_tree, "inat2018", num_classes=9000), "train").num_classes == 9000


def test_split_list_errors(split_tree, tmp_path):
    root, lists = split_tree["places_lt"]
    good = lists["train"].read_text().splitlines()

    def build(text=None, **extra):
        listed = tmp_path / "list.txt"
        if text is not None:
            listed.write_text(text)
        values = dict(dataset="places_lt", root=str(root), train_list=str(listed))
        return build_split(cfg(**{**values, **extra}), "train")

    with pytest.raises(FileNotFoundError, match=f"Split list {tmp_path}/list.txt .data.train_list. does not exist"):
        build()
    with pytest.raises(ValueError, match=r"list.txt, line 3: expected '<image path> <integer label>'"):
        build("\n".join(good[:2] + ["train/airfield/x.jpg"]))
    with pytest.raises(ValueError, match=r"list.txt, line 2: expected .* got 'train/a.jpg seven'"):
        build(good[0] + "\ntrain/a.jpg seven\n")
    with pytest.raises(ValueError, match=r"list.txt, line 1: label -1 is outside \[0, 365\)"):
        build("train/a.jpg -1\n")
    with pytest.raises(ValueError, match=r"line 2: label 365 is outside \[0, 365\)"):
        build(good[0] + "\ntrain/a.jpg 365\n")
    with pytest.raises(ValueError, match="data.train_list is empty"):
        build(train_list="")
    with pytest.raises(ValueError, match="data.test_list is empty"):
        build_split(cfg(dataset="places_lt", root=str(root), train_list=str(lists["train"])), "test")
    with pytest.raises(FileNotFoundError, match=f"data.root {tmp_path}/missing is not an existing folder"):
        build("\n".join(good), root=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="data.root is empty"):
        build("\n".join(good), root="")


def _damaged_copy(split_tree, tmp_path):
    """A copy of the ImageNet-LT sample with image 1 truncated, image 2 not an image and image 5 deleted."""
    source_root, lists = split_tree["imagenet_lt"]
    root = tmp_path / "copy"
    shutil.copytree(source_root, root)
    rels = [line.rsplit(maxsplit=1)[0] for line in lists["train"].read_text().splitlines()]
    # A JPEG cut after its headers: it opens, and fails only when its pixels are decoded.
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / rels[1], quality=90)
    whole = (root / rels[1]).read_bytes()
    (root / rels[1]).write_bytes(whole[: len(whole) // 2])
    Image.open(root / rels[1]).close()  # the header still reads
    (root / rels[2]).write_bytes(b"this is not an image")
    (root / rels[5]).unlink()
    return _list_cfg(split_tree, "imagenet_lt", root=str(root)), root, rels, lists["train"]


def test_missing_images_are_one_error_at_construction(split_tree, tmp_path):
    config, root, rels, listed = _damaged_copy(split_tree, tmp_path)
    message = f"1 of {len(rels)} images of data.train_list ({listed}) are missing under {root}, first: {rels[5]}."
    with pytest.raises(ValueError) as error:
        build_split(config, "train")
    assert str(error.value) == message
    (root / rels[6]).unlink()
    with pytest.raises(ValueError, match=rf"^2 of {len(rels)} images .* first: {rels[5]}, {rels[6]}\.$"):
        build_split(config, "train")


def test_corrupt_images_fail_when_loaded_and_check_images_finds_them(split_tree, tmp_path):
    config, root, rels, _ = _damaged_copy(split_tree, tmp_path)
    Image.new("RGB", (9, 7)).save(root / rels[5])  # back again: only the two corrupt files remain
    train = build_split(config, "train")
    assert len(train) == len(rels) and not train.decoded  # existence only, nothing decoded up front
    assert train[0][0].mode == "RGB"
    for i in (1, 2):
        with pytest.raises(ValueError, match=f"^Image {root / rels[i]} cannot be decoded") as error:
            train[i]
        assert "0x" not in str(error.value) and "Traceback" not in str(error.value)
    (root / rels[5]).unlink()  # gone after construction: found when loaded
    with pytest.raises(FileNotFoundError, match=f"Image {root / rels[5]} does not exist"):
        train[5]
    done = []
    problems = check_images(train, progress=done.append)
    assert sum(done) == len(train)
    assert [p for p, _ in problems] == [str(root / rels[i]) for i in (1, 2, 5)]
    reasons = [r for _, r in problems]
    assert reasons[0].startswith("cannot be decoded (") and "truncated" in reasons[0]
    assert reasons[1] == "cannot be decoded (not an image format Pillow can read)"
    assert reasons[2] == "missing"


def test_skip_corrupt_drops_missing_and_corrupt_images(split_tree, tmp_path):
    config, root, rels, listed = _damaged_copy(split_tree, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw warning: the run prints one line per image left out
        kept = build_split(dataclasses.replace(config, skip_corrupt=True), "train")
    assert len(kept) == len(rels) - 3 and kept.skipped == [str(root / rels[i]) for i in (1, 2, 5)]
    assert [kept[i][1] for i in range(len(kept))] == [
        int(line.split()[1]) for j, line in enumerate(listed.read_text().splitlines()) if j not in (1, 2, 5)
    ]
    assert [r for _, r in kept.problems][2] == "missing"
    done = []
    problems = check_images(kept, progress=done.append)  # decoded at construction: not decoded again
    assert done == [len(kept)] and kept.decoded
    assert [p for p, _ in problems] == kept.skipped
    assert all(r.endswith("; left out (data.skip_corrupt)") for _, r in problems)
    for name in rels:
        (root / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=f"Every image of data.train_list .* is missing or unreadable under {root}"):
        build_split(dataclasses.replace(config, skip_corrupt=True), "train")
