"""The roofline against numbers worked out by hand, on graphs small enough to check on paper.

Target: 1 GFLOP/s FP32, 4 GOP/s INT8, 1 GB/s, 10 us per layer. So 1 MAC = 2 ns at FP32 and
0.5 ns at INT8, 1 byte = 1 ns, and every layer adds 0.010 ms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.config import load_target
from edgekd.errors import BadInputError
from edgekd.measure.estimate import estimate_latency, estimate_layers

TARGET = """
name = "round-numbers"
runtime = "onnxruntime-cpu"
precision = "int8"
machine = "any"

[device]
kind = "this-machine"

[budget]
latency_p50_ms = 1.0

[hardware]
int8_tops = 0.004
fp16_tflops = 0.002
fp32_tflops = 0.001
memory_bandwidth_gbs = 1.0
layer_overhead_us = 10.0
"""
OVERHEAD_MS = 0.010


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "round.toml"
    path.write_text(TARGET)
    return load_target(str(path))


def _save(tmp_path: Path, nodes, initializers, name: str) -> Path:
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _f32(name: str, *shape: int):
    return numpy_helper.from_array(np.ones(shape, dtype=np.float32), name)


@pytest.fixture
def conv_gemm(tmp_path) -> Path:
    """x[N,1,8,8] -Conv(1->4, 3x3, pad 1)-> [N,4,8,8] -Flatten-> [N,256] -Gemm-> [N,10]."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["y"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    return _save(tmp_path, nodes, [_f32("w", 4, 1, 3, 3), _f32("b", 4), _f32("fc_w", 10, 256), _f32("fc_b", 10)],
                 "conv_gemm")


def test_conv_then_gemm_by_hand(conv_gemm, target):
    layers = estimate_layers(conv_gemm, target, batch=1)
    assert [(l.name, l.op, l.precision) for l in layers] == [("conv", "Conv", "fp32"), ("fc", "Gemm", "fp32")]
    conv, fc = layers
    # Conv: 4*8*8 outputs x 1*3*3 taps; tensors x 64 + w 36 + b 4 + y 256 = 360 floats
    assert conv.macs == 256 * 9 == 2304
    assert conv.bytes == 360 * 4 == 1440
    # a compute kind: 2 * 2304 ops / 1e9 = 4.608 us
    assert conv.ms == pytest.approx(0.004608 + OVERHEAD_MS)
    # Gemm: 10 outputs x 256 inputs; tensors flat 256 + w 2560 + b 10 + out 10 = 2836 floats
    assert fc.macs == 10 * 256 == 2560
    assert fc.bytes == 2836 * 4 == 11344
    # a Gemm is a compute kind: 2 * 2560 / 1e9 = 5.12 us, though moving its weights would take 11.344 us.
    # The plain roofline sums each kind's own bound (not a per-layer max) because that is the form
    # whose error on timed models is ROOFLINE_ERROR: the interval, not this sum, carries the rest
    assert fc.ms == pytest.approx(0.005120 + OVERHEAD_MS)

    latency, same = estimate_latency(conv_gemm, target)  # batch from the target: 1
    assert same == layers
    assert latency.p50 == pytest.approx(0.014608 + 0.015120)
    assert latency.p90 is None and latency.p99 is None  # an estimate states no tail it did not model
    assert (latency.source, latency.batch, latency.runs) == ("estimated", 1, 0)
    assert "round-numbers" in latency.runtime


def test_batch_scales_activations_not_weights(conv_gemm, target):
    conv, fc = estimate_layers(conv_gemm, target, batch=4)
    assert conv.macs == 4 * 2304
    assert conv.bytes == (4 * 64 + 36 + 4 + 4 * 256) * 4  # weights are read once per batch
    assert fc.macs == 4 * 2560
    assert fc.bytes == (4 * 256 + 2560 + 10 + 4 * 10) * 4


def test_qdq_conv_counts_at_int8(tmp_path, target):
    """x -Q-> -DQ-> Conv (weights DQ'd from int8): the conv runs in INT8, Q/DQ cost nothing."""
    scale = numpy_helper.from_array(np.array(0.05, dtype=np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "zero")
    w_q = numpy_helper.from_array(np.ones((4, 1, 3, 3), dtype=np.int8), "w_q")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["x_q"], name="quant"),
        helper.make_node("DequantizeLinear", ["x_q", "scale", "zero"], ["x_dq"], name="dequant"),
        helper.make_node("DequantizeLinear", ["w_q", "scale", "zero"], ["w"], name="dequant_w"),
        helper.make_node("Conv", ["x_dq", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["y"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    path = _save(tmp_path, nodes, [scale, zero, w_q, _f32("b", 4), _f32("fc_w", 10, 256), _f32("fc_b", 10)], "qdq")
    conv, fc = estimate_layers(path, target, batch=1)
    assert (conv.name, conv.precision, fc.precision) == ("conv", "int8", "fp32")
    assert conv.macs == 2304
    assert conv.bytes == 360  # one byte per element
    # compute: 2 * 2304 / 4e9 = 1.152 us (its 360 bytes are not what times a conv)
    assert conv.ms == pytest.approx(0.001152 + OVERHEAD_MS)
    assert fc.ms == pytest.approx(0.005120 + OVERHEAD_MS)  # FP32: the Gemm's input is a float Flatten


def test_not_onnx_is_bad_input(tmp_path, target):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(BadInputError, match="not an ONNX model"):
        estimate_layers(path, target, 1)
