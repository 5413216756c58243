"""A real TensorRT engine from a real INT8 student: built, compared with ONNX Runtime, timed.

These tests can only run on a machine with TensorRT and a CUDA GPU (pip install 'edgekd[tensorrt]'
on a Jetson or a GPU server); everywhere else they are skipped with the reason tensorrt_available()
gives. The CPU-only half of the TensorRT path is in test_tensorrt_static.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from edgekd.config import ActivationScheme, load_target
from edgekd.data import load_fashion_mnist
from edgekd.export.tensorrt_engine import ENGINE, prepare_engine
from edgekd.models import create_model
from edgekd.export.onnx_file import export_onnx
from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner
from edgekd.runtimes.tensorrt import TensorRTRunner, build_engine, sidecar_path, tensorrt_available
from edgekd.stages.quantize import quantize_with_nncf, strip_to_qdq

AVAILABLE, WHY_NOT = tensorrt_available()
pytestmark = [pytest.mark.tensorrt, pytest.mark.skipif(not AVAILABLE, reason=WHY_NOT)]

MIN_TOP1_AGREEMENT = 0.98
LOGIT_ATOL = 0.25  # INT8 kernels round differently from ONNX Runtime's; the profile's default int8_atol


@pytest.fixture(scope="session")
def fashion():
    bundle = load_fashion_mnist()
    return bundle.train.tensors, bundle.test.tensors


@pytest.fixture(scope="session")
def student_onnx(fashion, tmp_path_factory):
    """A briefly trained student (top-1 margins an untrained one lacks), quantized once per session."""
    (train_x, train_y), (test_x, _) = fashion
    torch.manual_seed(0)
    model = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for images, labels in DataLoader(TensorDataset(train_x[:4096], train_y[:4096]), batch_size=128, shuffle=True):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    quantized = quantize_with_nncf(model.eval(), TensorDataset(train_x[:512], train_y[:512]), 256,
                                   ActivationScheme.SYMMETRIC_SIGNED)
    path = tmp_path_factory.mktemp("engine") / "student.int8.onnx"
    return export_onnx(strip_to_qdq(quantized, test_x[:8]), test_x[:8], path)


@pytest.fixture(scope="session")
def engine(student_onnx):
    target = load_target("server-gpu")  # batch 16, profile 1..64
    info = build_engine(student_onnx, student_onnx.parent / ENGINE, target, workspace_mb=256)
    return info, TensorRTRunner(student_onnx.parent / ENGINE)


def test_engine_is_built_for_the_targets_batch_range(engine, student_onnx):
    info, runner = engine
    assert (info.min_batch, info.opt_batch, info.max_batch) == (1, 16, 64)
    assert (runner.min_batch, runner.max_batch, runner.input_shape) == (1, 64, (1, 28, 28))
    assert "int8" in info.precision
    sidecar = json.loads(sidecar_path(student_onnx.parent / ENGINE).read_text())
    assert sidecar["onnx"] == "student.int8.onnx" and sidecar["tensorrt_version"] == info.tensorrt_version


def test_engine_agrees_with_onnxruntime(engine, student_onnx, fashion):
    _, runner = engine
    _, (test_x, _) = fashion
    images = test_x[:256].numpy()
    ours = np.concatenate([runner.run(images[i:i + 64]) for i in range(0, 256, 64)])
    theirs = OnnxRuntimeRunner(student_onnx).run(images)
    assert ours.shape == theirs.shape == (256, 10)
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= MIN_TOP1_AGREEMENT
    assert np.abs(ours - theirs).max() <= LOGIT_ATOL
    assert np.allclose(runner.run(images[:1]), ours[:1], atol=1e-3)  # batch 1 after 64: same engine, same logits


def test_measure_returns_sane_percentiles(engine):
    _, runner = engine
    latency = runner.measure(16, label="test", max_seconds=2.0)
    assert latency.source == "measured" and latency.batch == 16 and latency.runs >= 50
    assert latency.runtime.startswith("tensorrt ") and " on " in latency.runtime
    assert 0 < latency.p50 <= latency.p90 <= latency.p99 < 1000


def test_prepare_engine_reports_a_checked_engine(student_onnx, fashion, tmp_path):
    _, (test_x, _) = fashion
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    onnx_path = run_dir / "student.int8.onnx"
    onnx_path.write_bytes(student_onnx.read_bytes())
    result = prepare_engine(run_dir, load_target("jetson-orin-nano"), onnx_path, test_x[:128].numpy())
    assert result["engine"] == ENGINE and (run_dir / ENGINE).is_file()
    assert result["engine_parity"]["ok"] and result["engine_parity"]["samples"] == 128
    assert result["engine_latency_ms"]["source"] == "measured" and result["engine_latency_ms"]["batch"] == 1
