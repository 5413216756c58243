"""Latency where the target is not here: a per-layer roofline over the exported ONNX graph.

For each layer: time = max(2 * MACs / peak ops of its precision, bytes moved / bandwidth)
+ the target's per-layer overhead; the model's latency is the sum. Quantize/dequantize pairs,
reshapes and activations that runtimes fuse into the preceding layer cost nothing. A layer runs
in INT8 when its input comes from a DequantizeLinear (a QDQ graph), else in the target's float
precision. It is an estimate of the typical (p50) time only, with p90/p99 left null: the report
says so, and `benchmarks/estimator.py` measures how far
it is from ONNX Runtime on this host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.config import Precision, Target
from edgekd.errors import BadInputError
from edgekd.measure.latency import Latency

FREE_OPS = {
    "QuantizeLinear", "DequantizeLinear", "Identity", "Flatten", "Reshape", "Shape", "Constant",
    "Squeeze", "Unsqueeze", "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu",
    "Gather", "Concat", "Cast", "Dropout", "Transpose",
}
BYTES = {"int8": 1, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class LayerEstimate:
    name: str
    op: str
    precision: str
    macs: int
    bytes: int
    ms: float


def _shapes(model) -> dict[str, tuple[int, ...]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _load_with_batch(path: Path, batch: int):
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise BadInputError(f"{path}: not an ONNX model ({type(err).__name__})") from None
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    return model


def _macs(node, shapes) -> int:
    out = shapes.get(node.output[0])
    if out is None:
        return 0
    if node.op_type == "Conv":
        weight = shapes.get(node.input[1])
        if weight is None:
            return 0
        return int(np.prod(out)) * int(np.prod(weight[1:]))
    if node.op_type in ("Gemm", "MatMul"):
        a = shapes.get(node.input[0])
        return int(np.prod(out)) * (a[-1] if a else 0)
    return 0


def estimate_layers(path: Path, target: Target, batch: int) -> list[LayerEstimate]:
    model = _load_with_batch(Path(path), batch)
    shapes = _shapes(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    from edgekd.runtimes import backend

    float_precision = "fp32" if target.precision is Precision.FP32 else backend(target).float_precision
    peaks = {"int8": target.hardware.int8_tops * 1e12, "fp16": target.hardware.fp16_tflops * 1e12,
             "fp32": target.hardware.fp32_tflops * 1e12}
    bandwidth = target.hardware.memory_bandwidth_gbs * 1e9
    overhead_ms = target.hardware.layer_overhead_us / 1000.0
    layers = []
    for index, node in enumerate(model.graph.node):
        if node.op_type in FREE_OPS:
            continue
        source = producers.get(node.input[0]) if node.input else None
        precision = "int8" if source is not None and source.op_type == "DequantizeLinear" else float_precision
        macs = _macs(node, shapes)
        elements = sum(int(np.prod(shapes[t])) for t in list(node.input) + list(node.output) if t in shapes)
        moved = elements * BYTES[precision]
        compute_s = 2 * macs / peaks[precision]
        ms = max(compute_s, moved / bandwidth) * 1000.0 + overhead_ms
        layers.append(LayerEstimate(node.name or f"{node.op_type}_{index}", node.op_type, precision, macs, moved, ms))
    return layers


def estimate_latency(path: Path, target: Target, batch: int | None = None) -> tuple[Latency, list[LayerEstimate]]:
    batch = batch or target.input.batch
    layers = estimate_layers(path, target, batch)
    total = sum(layer.ms for layer in layers)
    runtime = f"roofline estimate for {target.name} ({target.runtime.value}, {target.precision.value})"
    # p50 only: a roofline models the steady state, not the tail (scheduler preemption, DVFS,
    # thermal throttling, cache contention), and no source gives a p99/p50 factor that holds across
    # these devices. So p90/p99 stay None and the verdict marks the p99 check "not estimated".
    return Latency(total, None, None, "estimated", runtime, batch, 0), layers
