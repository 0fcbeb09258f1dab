"""Portable checkpoints: absolute data paths, and evaluating one split with a checkpoint's class names without the
training list or the train/ folder; plus the package's public names."""

import dataclasses
import importlib
import os
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ltcl.config.schema
from ltcl.config import DataConfig
from ltcl.data.datasets import DATASETS, build_split, resolve_data_paths
from tests.data.test_datasets_lists import _list_cfg, split_tree  # noqa: F401  (a fixture)


def cfg(**values) -> DataConfig:
    return dataclasses.replace(DataConfig(), **values)


def test_resolve_data_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    given = cfg(dataset="places_lt", root="data/../images", train_list="~/lists/train.txt", test_list="/abs/t.txt")
    resolved = resolve_data_paths(given)
    assert isinstance(resolved, DataConfig) and resolved is not given
    assert resolved.root == str(tmp_path / "images")
    assert resolved.train_list == str(tmp_path / "home" / "lists" / "train.txt")
    assert resolved.test_list == "/abs/t.txt" and resolved.val_list == ""  # empty stays empty
    assert given.root == "data/../images"  # the input is left alone
    assert dataclasses.replace(resolved, root=given.root, train_list=given.train_list) == given
    assert resolve_data_paths(cfg()).root == ""  # the digits need no path
    assert resolve_data_paths(resolved) == resolved


def test_a_split_list_is_evaluated_without_the_training_list(split_tree, tmp_path):  # noqa: F811
    config = _list_cfg(split_tree, "imagenet_lt")
    names = build_split(config, "train").classes
    portable = dataclasses.replace(config, train_list=str(tmp_path / "gone" / "train.txt"))
    with pytest.raises(FileNotFoundError, match="data.train_list"):
        build_split(portable, "test")  # names from the training list, which is gone
    test = build_split(portable, "test", class_names=names)
    assert test.classes == names and test.class_counts()[5] == 2
    with pytest.raises(ValueError, match="data.num_classes is 1000 but the given class names number 3"):
        build_split(portable, "test", class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="class_names must be a non-empty list of strings"):
        build_split(portable, "test", class_names=[1, 2])


def test_a_folder_is_evaluated_without_train(tmp_path):
    for split in ("train", "val"):
        for name in ("bee", "ant"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (5, 5), (len(name), 0, 0)).save(tmp_path / split / name / "0.png")
    config = cfg(dataset="image_folder", root=str(tmp_path))
    names = build_split(config, "train").classes
    assert names == ["ant", "bee"]
    shutil.rmtree(tmp_path / "train")
    with pytest.raises(FileNotFoundError, match="train does not exist"):
        build_split(config, "val")
    val = build_split(config, "val", class_names=names)
    assert val.classes == names and val.class_counts() == [1, 1]
    assert build_split(config, "val", class_names=["bee", "ant", "cow"]).class_counts() == [1, 1, 0]
    with pytest.raises(ValueError, match=f"^{tmp_path}/val/bee names a class that is not among the given class names"):
        build_split(config, "val", class_names=["ant"])


def test_cifar_and_digits_take_matching_class_names(tmp_path):
    x = np.zeros((10, 32, 32, 3), np.uint8)
    np.savez(tmp_path / "raw.npz", x_test=x, y_test=np.arange(10))
    config = cfg(dataset="cifar10_lt", root=str(tmp_path / "raw.npz"))
    mine = [f"c{i}" for i in range(10)]
    assert build_split(config, "test", class_names=mine).classes == mine
    with pytest.raises(ValueError, match="holds 10 classes but the given class names number 2"):
        build_split(config, "test", class_names=["a", "b"])
    assert build_split(cfg(), "test", class_names=mine).classes == mine
    with pytest.raises(ValueError, match="The digits have 10 classes but the given class names number 1"):
        build_split(cfg(), "test", class_names=["a"])


def test_package_layout_and_names():
    assert DATASETS == typing.get_args(ltcl.config.schema.Dataset)
    package = importlib.import_module("ltcl.data.datasets")
    for name in package.__all__ + ["DIGITS_TEST_PER_CLASS", "IMAGE_EXTENSIONS", "digits_arrays", "load_image"]:
        assert hasattr(package, name), name
    folder = Path(package.__file__).parent
    assert not (folder.parent / "datasets.py").exists()
    sizes = {p.name: len(p.read_text().splitlines()) for p in folder.glob("*.py")}
    assert set(sizes) == {"__init__.py", "base.py", "check.py", "cifar.py", "digits.py", "folder.py", "split_list.py"}
    assert max(sizes.values()) < 300, sizes
    assert os.path.basename(package.__file__) == "__init__.py"
