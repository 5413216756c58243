"""The TensorRT path that needs no TensorRT: the static QDQ check, the trtexec build script, and
what prepare_engine / build-engine do on a machine without TensorRT. Runs everywhere, in seconds."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch.utils.data import TensorDataset

from edgekd.config import ActivationScheme, load_target
from edgekd.data import load_fashion_mnist
from edgekd.export.tensorrt_engine import BUILD_SCRIPT, CHECK_IMAGES, build_engine_for_run, prepare_engine, write_build_script
from edgekd.errors import BadInputError, EnvironmentProblem
from edgekd.models import create_model
from edgekd.export.onnx_file import export_onnx
from edgekd.export.tensorrt_lint import TENSORRT_10_ONNX_OPS, check_tensorrt_qdq, raise_if_failed
from edgekd.runtimes.tensorrt import tensorrt_available
from edgekd.stages.quantize import quantize_with_nncf, strip_to_qdq

TENSORRT_HERE, WHY_NOT = tensorrt_available()


@pytest.fixture(scope="session")
def fashion() -> tuple[torch.Tensor, torch.Tensor]:
    """256 real Fashion-MNIST training images and their labels."""
    images, labels = load_fashion_mnist().train.tensors
    return images[:256], labels[:256]


def _int8_student(fashion, scheme: ActivationScheme, path: Path) -> Path:
    images, labels = fashion
    torch.manual_seed(0)
    model = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5)
    quantized = quantize_with_nncf(model, TensorDataset(images, labels), 64, scheme)
    return export_onnx(strip_to_qdq(quantized, images[:8]), images[:8], path)


@pytest.fixture(scope="session")
def symmetric_onnx(fashion, tmp_path_factory) -> Path:
    return _int8_student(fashion, ActivationScheme.SYMMETRIC_SIGNED, tmp_path_factory.mktemp("sym") / "student.int8.onnx")


@pytest.fixture(scope="session")
def asymmetric_onnx(fashion, tmp_path_factory) -> Path:
    return _int8_student(fashion, ActivationScheme.ASYMMETRIC, tmp_path_factory.mktemp("asym") / "student.int8.onnx")


def _save(graph, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _conv_graph(scale: np.ndarray, axis: int | None, out_channels: int = 4) -> onnx.GraphProto:
    """input -> Conv whose weight goes through DequantizeLinear(int8 weight, `scale`, zero point 0)."""
    weight = np.ones((out_channels, 3, 3, 3), dtype=np.int8)
    attrs = {} if axis is None else {"axis": axis}
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="weight_dq", **attrs),
        helper.make_node("Conv", ["input", "w"], ["logits"], name="conv", pads=[1, 1, 1, 1]),
    ]
    initializers = [
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(scale.astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), "w_zp"),
    ]
    return helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", out_channels, 32, 32])], initializers)


def test_symmetric_student_passes(symmetric_onnx):
    report = check_tensorrt_qdq(symmetric_onnx)
    assert report.problems == []
    assert report.ok
    assert report.opset == 17
    # edgekd_cnn: 4 convs and a classifier, each with a quantized input and weight
    assert report.quantize_nodes >= 10 and report.dequantize_nodes == report.quantize_nodes
    raise_if_failed(report, symmetric_onnx)  # no exception


def test_asymmetric_student_fails_naming_its_nodes(asymmetric_onnx):
    report = check_tensorrt_qdq(asymmetric_onnx)
    assert not report.ok
    qdq_names = {n.name for n in onnx.load(str(asymmetric_onnx)).graph.node
                 if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    for problem in report.problems:
        assert "zero point" in problem and "needs symmetric INT8" in problem
        assert problem.split(" ")[1] in qdq_names  # "node <name> (input ...)"
    with pytest.raises(BadInputError) as caught:
        raise_if_failed(report, asymmetric_onnx)
    message = str(caught.value)
    assert "\n" not in message and report.problems[0] in message
    assert f"and {len(report.problems) - 1} more problems" in message


def test_unsupported_and_custom_ops_are_named(tmp_path):
    nodes = [
        helper.make_node("Relu", ["input"], ["r"], name="relu"),
        helper.make_node("Det", ["r"], ["d"], name="determinant"),
        helper.make_node("Gelu", ["d"], ["logits"], name="fused_gelu", domain="com.microsoft"),
    ]
    graph = helper.make_graph(nodes, "ops", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2])])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.save(model, str(tmp_path / "ops.onnx"))
    report = check_tensorrt_qdq(tmp_path / "ops.onnx")
    assert not report.ok
    assert report.problems == [
        "node determinant: op Det is not among TensorRT 10's supported ONNX operators",
        "node fused_gelu: custom op com.microsoft::Gelu; TensorRT would need a plugin for it",
    ]
    assert {"Conv", "Gemm", "QuantizeLinear", "DequantizeLinear", "Relu"} <= TENSORRT_10_ONNX_OPS
    with pytest.raises(BadInputError, match="no ONNX operator list for TensorRT 8"):
        check_tensorrt_qdq(tmp_path / "ops.onnx", tensorrt_version="8.6")


def test_opset_12_fails(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"], name="relu")], "old",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])])
    report = check_tensorrt_qdq(_save(graph, tmp_path / "old.onnx", opset=12))
    assert report.opset == 12 and not report.ok
    assert report.problems[0].startswith("opset 12: ")


def test_weight_scales_per_output_channel(tmp_path):
    good = check_tensorrt_qdq(_save(_conv_graph(np.full(4, 0.1), axis=0), tmp_path / "good.onnx"))
    assert good.ok, good.problems
    per_tensor = check_tensorrt_qdq(_save(_conv_graph(np.array(0.1), axis=None), tmp_path / "tensor.onnx"))
    assert per_tensor.problems == [
        "node weight_dq (weight of Conv conv): one per-tensor scale for 4 output channels; quantize weights "
        "per output channel (axis 0) for TensorRT INT8"]
    # per-channel scales, but on ONNX's default axis 1 (input channels): 3 scales where 4 are needed
    wrong_axis = check_tensorrt_qdq(_save(_conv_graph(np.full(3, 0.1), axis=None), tmp_path / "axis.onnx"))
    assert wrong_axis.problems == [
        "node weight_dq (weight of Conv conv): 3 scales on axis 1, but the 4 output channels are on axis 0"]
    # one output channel: a single scale is per channel
    single = check_tensorrt_qdq(_save(_conv_graph(np.array(0.1), axis=None, out_channels=1), tmp_path / "one.onnx"))
    assert single.ok, single.problems


@pytest.mark.parametrize("name, dla", [("jetson-orin-nano", False), ("server-gpu", False), ("jetson-agx-orin", True)])
def test_build_script_runs_trtexec_with_the_targets_shapes(tmp_path, name, dla):
    target = load_target(name)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    graph = _conv_graph(np.full(4, 0.1), axis=0)  # input (batch, 3, 32, 32): C, H, W come from the file
    _save(graph, run_dir / "student.int8.onnx")
    script = write_build_script(run_dir, target)
    assert script == run_dir / BUILD_SCRIPT
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    text = script.read_text()
    b, m = target.input.batch, target.input.max_batch
    assert (f"--minShapes=input:1x3x32x32 --optShapes=input:{b}x3x32x32 --maxShapes=input:{m}x3x32x32"
            in text)
    assert ("# --useDLACore=0 --allowGPUFallback" in text) is dla

    # Run it from elsewhere, with recording stand-ins for trtexec and edgekd on PATH.
    tools = tmp_path / "bin"
    tools.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("trtexec", "edgekd"):
        (tools / tool).write_text(f'#!/bin/sh\necho "{tool} $* (in $(pwd))" >> {log}\n')
        (tools / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    env.pop("TRTEXEC", None)
    subprocess.run([str(script)], cwd=tmp_path, env=env, check=True, timeout=30)
    calls = log.read_text().splitlines()
    assert calls == [
        f"trtexec --onnx=student.int8.onnx --saveEngine=student.engine --int8 --fp16 "
        f"--minShapes=input:1x3x32x32 --optShapes=input:{b}x3x32x32 --maxShapes=input:{m}x3x32x32 "
        f"--memPoolSize=workspace:1024M (in {run_dir})",
        f"edgekd bench student.engine --target {name} (in {run_dir})",
    ]


@pytest.mark.skipif(TENSORRT_HERE, reason="TensorRT is installed here: the engine tests cover this")
def test_prepare_engine_without_tensorrt(symmetric_onnx, asymmetric_onnx, fashion, tmp_path):
    target = load_target("jetson-orin-nano")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    onnx_path = run_dir / "student.int8.onnx"
    onnx_path.write_bytes(symmetric_onnx.read_bytes())
    result = prepare_engine(run_dir, target, onnx_path, fashion[0][:32])
    assert result["engine"] is None and result["engine_latency_ms"] is None and result["engine_parity"] is None
    assert result["engine_note"].startswith(f"not built here: {WHY_NOT}")
    assert result["qdq_check"]["ok"] and result["qdq_check"]["problems"] == []
    assert result["build_script"] == BUILD_SCRIPT and os.access(run_dir / BUILD_SCRIPT, os.X_OK)
    assert np.array_equal(np.load(run_dir / CHECK_IMAGES), fashion[0][:32].numpy())

    onnx_path.write_bytes(asymmetric_onnx.read_bytes())
    refused = prepare_engine(run_dir, target, onnx_path, None)
    assert refused["engine"] is None and not refused["qdq_check"]["ok"]
    assert refused["engine_note"].startswith("not built: the INT8 graph is not TensorRT-ready")


@pytest.mark.skipif(TENSORRT_HERE, reason="TensorRT is installed here: the engine tests cover this")
def test_build_engine_for_run_needs_tensorrt(symmetric_onnx, tmp_path):
    with pytest.raises(BadInputError, match="not an edgekd run folder"):
        build_engine_for_run(tmp_path)
    target = load_target("jetson-orin-nano")
    (tmp_path / "config.json").write_text(json.dumps({"target": target.model_dump(mode="json")}))
    with pytest.raises(BadInputError, match="student.int8.onnx not found"):
        build_engine_for_run(tmp_path)
    (tmp_path / "student.int8.onnx").write_bytes(symmetric_onnx.read_bytes())
    with pytest.raises(EnvironmentProblem) as caught:
        build_engine_for_run(tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert f"run {tmp_path / BUILD_SCRIPT}" in message and "pip install 'edgekd[tensorrt]'" in message
    assert os.access(tmp_path / BUILD_SCRIPT, os.X_OK)
