"""Shared fixtures: slices of the real Fashion-MNIST data and one real smoke run of the pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgekd.data import DataBundle, limit, load_fashion_mnist

REPO = Path(__file__).resolve().parent.parent


def edgekd(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run the real `edgekd` command line in a subprocess."""
    full_env = {**os.environ, "EDGEKD_QUIET": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=full_env, timeout=timeout)


@pytest.fixture(scope="session")
def fashion() -> DataBundle:
    return load_fashion_mnist()


@pytest.fixture(scope="session")
def fashion_slice(fashion) -> DataBundle:
    return limit(fashion, 2048, 512)


@pytest.fixture(scope="session")
def test_images(fashion) -> torch.Tensor:
    return torch.stack([fashion.test[i][0] for i in range(256)])


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One teacher cache for the whole session: the smoke teacher trains once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, cache_dir) -> tuple[Path, dict, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("runs") / "smoke-host"
    done = edgekd("compress", "--profile", "smoke", "--target", "host-cpu", "--run-dir", str(run_dir),
                  "--cache-dir", str(cache_dir))
    assert done.returncode in (0, 3, 6), done.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    # 0 MET, 3 MISSED, 6 NOT SHOWN: one exit code per verdict
    from edgekd.pipeline import exit_code

    assert done.returncode == exit_code(report["budget"])
    return run_dir, report, done


@pytest.fixture(scope="session")
def detection_splits(tmp_path_factory) -> dict:
    """40 synthetic detection images at 96 px (clip art on real backgrounds, edgekd.detection.data),
    read back from their COCO files: the train and val splits."""
    from edgekd.detection.data import make_synthetic, read_coco

    root = make_synthetic(tmp_path_factory.mktemp("det"), n_images=40, image_size=96, seed=0).root
    return {s: read_coco(root / "coco" / s, root / "coco" / f"instances_{s}.json", image_size=96)[0]
            for s in ("train", "val")}
