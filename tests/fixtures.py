"""Data the recipe was not tuned on: real Fashion-MNIST images written as PNG ImageFolder trees.

Written class by class, as every ImageFolder tree is read (sorted by class), in the layouts users
bring: `train/` + `val/`, `train/` + `valid/` (Kaggle, Roboflow), `train/` + `val/` + `test/`, or
one tree of class folders. Grey or RGB (a random tint per image, so colour carries no label).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist

LAYOUTS = {
    "train_val": {"train": 0.8, "val": 0.2},
    "train_valid": {"train": 0.8, "valid": 0.2},
    "train_val_test": {"train": 0.7, "val": 0.1, "test": 0.2},
    "one_tree": {".": 1.0},
}


def write_image_folder(root: Path, images: int, *, layout: str = "train_val", rgb: bool = False,
                       classes: int = 10, size: int = 28, seed: int = 0) -> Path:
    """`images` real Fashion-MNIST training images (the same number of each class, picked at
    random with `seed`) as PNG files under `root`, in `layout`. Returns `root`."""
    from PIL import Image

    root = Path(root)
    fashion = load_fashion_mnist()
    x, y = fashion.train.tensors
    rng = np.random.default_rng(seed)
    per_class = images // classes
    shares = LAYOUTS[layout]
    for label in range(classes):
        picked = rng.permutation(np.flatnonzero(y.numpy() == label))[:per_class]
        start = 0
        for n_split, (split, share) in enumerate(shares.items()):
            count = per_class - start if n_split == len(shares) - 1 else int(round(per_class * share))
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in picked[start:start + count]:
                grey = ((x[index, 0].numpy() * FASHION_MNIST_STD + FASHION_MNIST_MEAN).clip(0, 1) * 255).astype(np.uint8)
                if rgb:
                    tint = rng.uniform(0.5, 1.0, size=3)
                    image = Image.fromarray((grey[..., None] * tint).astype(np.uint8), mode="RGB")
                else:
                    image = Image.fromarray(grey, mode="L")
                if size != 28:
                    image = image.resize((size, size))
                image.save(folder / f"{index:05d}.png")
            start += count
    return root
