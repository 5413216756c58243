"""`edgekd compress --data PATH --teacher CKPT --student NAME` on a user's ImageFolder tree."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

from edgekd.data import load_fashion_mnist
from tests.conftest import REPO, edgekd


def _image_folder(root, per_class: int = 120):
    """Real Fashion-MNIST images of three classes written as PNG files, split into train/ and val/."""
    from PIL import Image

    fashion = load_fashion_mnist()
    counts = {}
    for index in range(len(fashion.train)):
        x, y = fashion.train[index]
        label = int(y)
        if label > 2 or counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        split = "val" if counts[label] % 4 == 0 else "train"
        pixels = ((x[0] * 0.3530 + 0.2860).clamp(0, 1) * 255).to(torch.uint8).numpy()
        path = root / split / f"class{label}" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(pixels), mode="L").save(path)
        if len(counts) == 3 and min(counts.values()) >= per_class:
            break


def test_compress_on_an_image_folder_with_a_given_teacher_and_student(tmp_path, cache_dir):
    _image_folder(tmp_path / "data")
    # the user's own teacher, trained in its own process as a user would
    script = f"""
from pathlib import Path
from edgekd.config import DataConfig
from edgekd.data import load_image_folder
from edgekd.training.losses import CrossEntropyObjective
from edgekd.models import ModelSpec, save_checkpoint
from edgekd.training.loop import TrainPlan, fit

bundle = load_image_folder(Path({str(tmp_path / "data")!r}), DataConfig(), image_size=28, seed=0)
spec = ModelSpec("edgekd_cnn", 3, bundle.input_shape, 1.0)
teacher = spec.build()
fit(teacher, CrossEntropyObjective(), bundle.train, TrainPlan(3, 0.1, 0, 32, 0), label="teacher")
save_checkpoint(teacher, spec, Path({str(tmp_path / "teacher.pt")!r}))
"""
    trained = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]

    run_dir = tmp_path / "run"
    done = edgekd("compress", "--profile", "smoke", "--target", "host-cpu", "--data", str(tmp_path / "data"),
                  "--image-size", "28", "--teacher", str(tmp_path / "teacher.pt"),
                  "--student", "edgekd_mobilenet_v3_small", "--width", "0.5", "--run-dir", str(run_dir),
                  "--cache-dir", str(cache_dir))
    assert done.returncode in (0, 3, 6), done.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["dataset"]["classes"] == ["class0", "class1", "class2"]
    assert (report["dataset"]["train"], report["dataset"]["val"], report["dataset"]["test"]) == (243, 27, 90)
    assert report["dataset"]["splits"]["test"] == str(tmp_path / "data" / "val")
    assert report["stages"][0]["details"]["origin"] == str(tmp_path / "teacher.pt")
    assert report["stages"][0]["accuracy"] > 0.5  # three classes: chance is a third
    assert (run_dir / "student.int8.onnx").is_file()
