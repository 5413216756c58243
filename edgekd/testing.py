"""Real data and planted models for edgekd's tests and benchmarks (as `numpy.testing` is numpy's):
so `benchmarks/` import edgekd as an installed package, never `tests/`.

- `write_image_folder`: data the recipe was not tuned on: real Fashion-MNIST images written as PNG
  ImageFolder trees, class by class (as every ImageFolder tree is read), in the layouts users bring:
  `train/` + `val/`, `train/` + `valid/` (Kaggle, Roboflow), `train/` + `val/` + `test/`, or one
  tree of class folders; grey or RGB (a random tint per image, so colour carries no label).
- `plant_student`: a planted regression for the CI gate: the smoke student's layers (edgekd_cnn)
  made wider until they need at least `factor` times the MACs of a finished run's final student,
  INT8-quantized the same way. (Pruning the run's distilled student less cannot hit 1.5x: its
  channels go in steps of 4, which gives 1.29x or 1.90x.)
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


def plant_student(run_dir: Path, factor: float, out: Path) -> tuple[Path, int, int]:
    """(INT8 ONNX path, its MACs, the run's final student's MACs). The run: a host-cpu run of
    the smoke profile (an edgekd_cnn student on Fashion-MNIST)."""
    import torch
    from torch.utils.data import Subset

    from edgekd.config import ActivationScheme, load_profile
    from edgekd.data import load_data
    from edgekd.metrics import count
    from edgekd.models import create_model
    from edgekd.export.onnx_file import export_onnx
    from edgekd.pipeline import read_report
    from edgekd.runtimes.onnxruntime import store_int8_weights
    from edgekd.stages.quantize import quantize_with_nncf, strip_to_qdq

    report = read_report(Path(run_dir) / "report.json")
    final_macs = report["stages"][-1]["macs"]
    data = load_data(None, load_profile("smoke").data, 32, 0)
    example = torch.stack([data.test[i][0] for i in range(8)])
    width = 0.05
    while True:
        torch.manual_seed(0)
        model = create_model("edgekd_cnn", data.num_classes, data.input_shape, width).eval()
        macs = count(model, example)[0]
        if macs >= factor * final_macs:
            break
        width = round(width + 0.01, 2)
    scheme = ActivationScheme(report["target"]["activations"])
    quantized = quantize_with_nncf(model, Subset(data.train, range(256)), 256, scheme)  # this CPU's weight bits
    return store_int8_weights(export_onnx(strip_to_qdq(quantized, example), example, Path(out))), macs, final_macs
