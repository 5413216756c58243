import gzip

import pytest
import torch

from edgekd.config import DataConfig
from edgekd.data import load_data, load_fashion_mnist, load_image_folder, read_idx
from edgekd.errors import BadInputError


def test_fashion_mnist_is_the_full_real_data_set(fashion):
    assert len(fashion.train) == 60_000 and len(fashion.test) == 10_000
    x, y = fashion.train[0]
    assert tuple(x.shape) == (1, 28, 28) and 0 <= int(y) < 10
    assert fashion.num_classes == 10


def test_limits_take_slices_of_the_real_splits():
    bundle = load_data(None, DataConfig(train_limit=100, test_limit=50))
    assert len(bundle.train) == 100 and len(bundle.test) == 50


def test_missing_default_data_says_how_to_get_it(tmp_path):
    with pytest.raises(BadInputError, match="apt-get install -y dataset-fashion-mnist.*--data"):
        load_fashion_mnist(tmp_path)


def test_truncated_idx_file_is_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 28, 0, 0, 0, 28]) + b"\0" * 100)
    with pytest.raises(BadInputError, match="truncated"):
        read_idx(path)


def _write_png(path, value, mode="L"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (12, 10), value).save(path)


def test_image_folder_with_train_and_val(tmp_path):
    for split in ("train", "val"):
        for label, name in enumerate(("cat", "dog")):
            for i in range(3):
                _write_png(tmp_path / split / name / f"{i}.png", 40 * label + i)
    bundle = load_image_folder(tmp_path, DataConfig(), image_size=16, seed=0)
    assert bundle.classes == ["cat", "dog"] and len(bundle.train) == 6 and len(bundle.test) == 6
    x, y = bundle.train[4]
    assert tuple(x.shape) == (1, 16, 16) and y == 1


def test_an_image_folder_is_decoded_once_when_it_fits_in_memory(tmp_path, monkeypatch):
    import edgekd.data

    for label, name in enumerate(("cat", "dog")):
        for i in range(3):
            _write_png(tmp_path / name / f"{i}.png", 40 * label + i)
    bundle = load_image_folder(tmp_path, DataConfig(test_fraction=0.5), image_size=16, seed=0)
    first = [bundle.train[i][0] for i in range(len(bundle.train))]
    for png in tmp_path.rglob("*.png"):  # a second epoch reads the kept tensors, not the files
        png.unlink()
    assert all(torch.equal(a, bundle.train[i][0]) for i, a in enumerate(first))

    monkeypatch.setattr(edgekd.data, "DECODED_CACHE_BYTES", 100)  # too big to keep: read every time
    for label, name in enumerate(("cat", "dog")):
        for i in range(3):
            _write_png(tmp_path / name / f"{i}.png", 40 * label + i)
    big = load_image_folder(tmp_path, DataConfig(test_fraction=0.5), image_size=16, seed=0)
    big.train[0]
    for png in tmp_path.rglob("*.png"):
        png.unlink()
    with pytest.raises(BadInputError, match="unreadable image"):
        big.train[0]


def test_one_tree_is_split_by_a_seeded_fraction(tmp_path):
    for label, name in enumerate(("a", "b")):
        for i in range(10):
            _write_png(tmp_path / name / f"{i}.png", (10 * i, 0, 0), mode="RGB")
    first = load_image_folder(tmp_path, DataConfig(test_fraction=0.2), image_size=8, seed=3)
    again = load_image_folder(tmp_path, DataConfig(test_fraction=0.2), image_size=8, seed=3)
    assert len(first.test) == 4 and len(first.train) == 16
    assert first.test.samples == again.test.samples
    assert first.input_shape == (3, 8, 8)
