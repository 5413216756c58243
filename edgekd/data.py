"""Data sets: the default Fashion-MNIST from Debian's offline package, or a user's ImageFolder.

Nothing here downloads: the default data comes from `apt-get install dataset-fashion-mnist`,
user data from a local folder. Every problem with either is a one-line `BadInputError`.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from edgekd.config import DataConfig
from edgekd.errors import BadInputError

FASHION_MNIST_DIR = Path(os.environ.get("EDGEKD_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class DataBundle:
    """What every stage needs to know about the data: splits, classes and input shape."""

    name: str
    train: Dataset
    test: Dataset
    classes: list[str]
    input_shape: tuple[int, int, int]  # C, H, W

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise BadInputError(f"cannot read {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise BadInputError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise BadInputError(f"{path}: truncated idx file ({len(raw) - offset} bytes for shape {dims})")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _fashion_split(root: Path, prefix: str) -> TensorDataset:
    images = read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    x = ((x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD).unsqueeze(1)
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


def _idx_file(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise BadInputError(
        f"Fashion-MNIST not found in {root} (missing {stem}.gz): install it with "
        "'sudo apt-get install -y dataset-fashion-mnist', or pass your own data with --data PATH"
    )


def load_fashion_mnist(root: Path = FASHION_MNIST_DIR) -> DataBundle:
    return DataBundle(
        name="fashion-mnist",
        train=_fashion_split(root, "train"),
        test=_fashion_split(root, "t10k"),
        classes=list(FASHION_MNIST_CLASSES),
        input_shape=(1, 28, 28),
    )


class _ImageFiles(Dataset):
    """A list of (path, label) read with Pillow, resized to one square size."""

    def __init__(self, samples: list[tuple[Path, int]], image_size: int, channels: int):
        from torchvision.transforms import v2

        self.samples = samples
        self.channels = channels
        self.transform = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize((image_size, image_size), antialias=True),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([0.5] * channels, [0.5] * channels),
            ]
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.channels == 1 else "RGB")
                return self.transform(image), label
        except OSError as err:
            raise BadInputError(f"unreadable image {path}: {err}") from None


def _scan_classes(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                samples.append((path, label))
    return classes, samples


def _check_images(samples: list[tuple[Path, int]]) -> int:
    """Open every header once up front, so a bad file stops the run before training starts."""
    from PIL import Image, UnidentifiedImageError

    channels = 1
    for path, _ in samples:
        try:
            with Image.open(path) as image:
                image.verify()
                if image.mode not in ("L", "1", "I;16", "I", "F"):
                    channels = 3
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            raise BadInputError(f"unreadable image {path}: {err}") from None
    return channels


def load_image_folder(root: Path, config: DataConfig, image_size: int, seed: int) -> DataBundle:
    """An ImageFolder tree: `train/` and `val/` (or `test/`), or one tree split by a seeded fraction."""
    if not root.is_dir():
        raise BadInputError(f"data folder not found: {root}")
    held_out = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        classes, train_samples = _scan_classes(root / "train")
        test_classes, test_samples = _scan_classes(held_out)
        if test_classes != classes:
            raise BadInputError(f"{held_out}: classes {test_classes} differ from train/ classes {classes}")
    else:
        classes, samples = _scan_classes(root)
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
        n_test = max(1, int(round(len(samples) * config.val_fraction)))
        test_samples = [samples[i] for i in order[:n_test]]
        train_samples = [samples[i] for i in order[n_test:]]
    if not train_samples:
        raise BadInputError(f"{root}: no images found (expected class sub-folders holding {sorted(IMAGE_SUFFIXES)})")
    if len(classes) < 2:
        raise BadInputError(f"{root}: found {len(classes)} class folder(s); a classifier needs at least 2")
    if not test_samples:
        raise BadInputError(f"{root}: no held-out images (add val/ or raise val_fraction)")
    channels = _check_images(train_samples + test_samples)
    return DataBundle(
        name=f"imagefolder:{root}",
        train=_ImageFiles(train_samples, image_size, channels),
        test=_ImageFiles(test_samples, image_size, channels),
        classes=classes,
        input_shape=(channels, image_size, image_size),
    )


def load_data(path: str | None, config: DataConfig, image_size: int = 32, seed: int = 0) -> DataBundle:
    bundle = load_fashion_mnist() if path is None else load_image_folder(Path(path), config, image_size, seed)
    return limit(bundle, config.train_limit, config.test_limit)


def limit(bundle: DataBundle, train_limit: int | None, test_limit: int | None) -> DataBundle:
    """The first N images of each split: the smoke profile's slices of real data."""

    def head(dataset: Dataset, n: int | None) -> Dataset:
        return dataset if n is None or n >= len(dataset) else Subset(dataset, range(n))

    return DataBundle(
        bundle.name, head(bundle.train, train_limit), head(bundle.test, test_limit), bundle.classes, bundle.input_shape
    )
