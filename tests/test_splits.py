"""Validation, test and every subset are seeded and class-stratified, whatever the folder layout."""

from collections import Counter

import pytest
import torch

from edgekd.config import DataConfig
from edgekd.data import labels_of, load_data, stratified_subset
from edgekd.errors import BadInputError
from edgekd.testing import write_image_folder


@pytest.fixture(scope="module")
def sorted_tree(tmp_path_factory):
    """1,000 grey PNGs in one class-sorted tree."""
    return write_image_folder(tmp_path_factory.mktemp("tree"), 1000, layout="one_tree")


def test_a_class_sorted_tree_gives_a_calibration_set_holding_every_class(sorted_tree):
    first_64_files = sorted(sorted_tree.rglob("*.png"))[:64]
    assert len({p.parent.name for p in first_64_files}) == 1  # "the first N" of such a tree: one class
    bundle = load_data(str(sorted_tree), DataConfig(), image_size=28)
    calibration = labels_of(stratified_subset(bundle.train, 64, seed=0))
    assert len(set(calibration)) == 10 and max(Counter(calibration).values()) <= 7


def test_one_tree_carves_test_and_validation_without_overlap(sorted_tree):
    bundle = load_data(str(sorted_tree), DataConfig(val_fraction=0.1, test_fraction=0.2), image_size=28, seed=3)
    assert len(bundle.test) == 200 and len(bundle.val) == 80 and len(bundle.train) == 720
    test_files = {p for p, _ in bundle.test.samples}
    train_files = {bundle.train.dataset.samples[i][0] for i in bundle.train.indices}
    val_files = {bundle.val.dataset.samples[i][0] for i in bundle.val.indices}
    assert not (test_files & train_files) and not (val_files & train_files) and not (val_files & test_files)
    for split in (bundle.train, bundle.val, bundle.test):
        assert set(Counter(labels_of(split)).values()) == {len(split) // 10}
    again = load_data(str(sorted_tree), DataConfig(val_fraction=0.1, test_fraction=0.2), image_size=28, seed=3)
    assert again.val.indices == bundle.val.indices
    assert "seeded, stratified" in bundle.splits["test"] and "seeded, stratified" in bundle.splits["val"]


def test_train_and_valid_is_read_as_train_and_a_held_out_split(tmp_path):
    write_image_folder(tmp_path, 500, layout="train_valid", rgb=True)
    bundle = load_data(str(tmp_path), DataConfig(), image_size=16)
    assert bundle.classes == [f"class_{i}" for i in range(10)]  # not "train" vs "valid"
    assert bundle.splits["test"] == str(tmp_path / "valid") and len(bundle.test) == 100
    assert bundle.input_shape == (3, 16, 16)
    assert len(bundle.train) + len(bundle.val) == 400 and len(set(labels_of(bundle.val))) == 10


def test_train_val_test_uses_the_users_validation_folder(tmp_path):
    write_image_folder(tmp_path, 500, layout="train_val_test")
    bundle = load_data(str(tmp_path), DataConfig(), image_size=28)
    assert bundle.splits == {"train": str(tmp_path / "train"), "test": str(tmp_path / "test"),
                             "val": str(tmp_path / "val")}
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (350, 50, 100)


def test_two_validation_folders_are_ambiguous(tmp_path):
    write_image_folder(tmp_path, 200, layout="train_val")
    (tmp_path / "valid" / "class_0").mkdir(parents=True)
    with pytest.raises(BadInputError, match="several held-out folders"):
        load_data(str(tmp_path), DataConfig(), image_size=28)


def test_fashion_mnist_validation_comes_from_train_and_test_is_untouched():
    bundle = load_data(None, DataConfig())
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (54_000, 6_000, 10_000)
    assert set(Counter(labels_of(bundle.val)).values()) == {600}
    assert not set(bundle.train.indices) & set(bundle.val.indices)


def test_smoke_slices_are_stratified_random_subsets():
    bundle = load_data(None, DataConfig(train_limit=100, val_limit=30, test_limit=50))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (100, 30, 50)
    for split in (bundle.train, bundle.val, bundle.test):
        assert len(set(labels_of(split))) == 10
    assert labels_of(bundle.test) != [int(y) for y in load_data(None, DataConfig()).test.tensors[1][:50]]


def test_stratified_subset_is_seeded():
    labels = torch.arange(10).repeat_interleave(50)
    dataset = torch.utils.data.TensorDataset(torch.zeros(500, 1), labels)
    first, again, other = (stratified_subset(dataset, 40, seed) for seed in (1, 1, 2))
    assert first.indices == again.indices and first.indices != other.indices
    assert Counter(labels_of(first)) == {c: 4 for c in range(10)}
