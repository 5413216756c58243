"""Latency where the target is not here: a per-layer model over the exported ONNX graph.

Each layer has a kind (`layer_kind`: dense, depthwise or pointwise convolution, fully connected,
or memory-bound: elementwise, pooling). A target with a `[calibration]` table (fitted on
published and measured timings: docs/latency_estimate.md) times a compute layer at its kind's
achieved fraction of the precision's peak, a memory-bound layer at its fraction of the bandwidth,
plus a fitted per-layer cost. A target without one gets the plain roofline, the same form with
every fraction at 1: a compute layer takes 2 * MACs / peak ops, a memory-bound one (depthwise,
pooling, elementwise) bytes moved / bandwidth, each plus the target's per-layer overhead. (Not
max(compute, memory) per layer: the form must be the one `ROOFLINE_ERROR` was measured with, and
that is computed from per-kind totals, which a per-layer max cannot be.) The model's latency is the
sum, with an interval from the estimator's measured error: the calibration's own, or for the
plain roofline the error it showed on the published data (`ROOFLINE_ERROR`). Quantize/dequantize pairs,
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
    "Gather", "Concat", "Cast", "Dropout", "Transpose", "BatchNormalization",  # fused into the conv before it
}
KINDS = ("conv", "depthwise", "pointwise", "fc", "pool", "memory")
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "ReduceMean", "ReduceMax"}
# estimated / measured of the plain roofline (`calibrate.roofline_ms`, the form `layer_ms` uses
# without a calibration) over 122 points: every row of edgekd/targets/calibration/published.csv and
# ONNX Runtime timings on two host CPUs, an AMD EPYC and an Intel Xeon (benchmarks/calibrate_estimator.py;
# tables in docs/latency_estimate.md). The roofline runs at peak, so it is rarely slow; how much
# faster than real it is, is what the interval must cover.
ROOFLINE_ERROR = (0.192, 1.055)
BYTES = {"int8": 1, "fp16": 2, "fp32": 4}
MEMORY_BOUND = ("depthwise", "pool", "memory")  # timed by the bytes they move; the rest by MACs


@dataclass(frozen=True)
class LayerEstimate:
    name: str
    op: str
    kind: str  # one of KINDS
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


def layer_kind(node, shapes) -> str:
    """Which efficiency a layer runs at: runtimes reach very different fractions of peak on a
    depthwise 3x3 (little reuse, memory-bound) and a dense 3x3 convolution of the same MACs."""
    if node.op_type in ("Gemm", "MatMul"):
        return "fc"
    if node.op_type in POOLS:
        return "pool"
    if node.op_type != "Conv":
        return "memory"
    weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if weight is not None and group > 1 and weight[1] == 1:
        return "depthwise"
    if weight is not None and group == 1 and all(k == 1 for k in weight[2:]):
        return "pointwise"
    return "conv"


def graph_layers(path: Path, batch: int, precision: str | None = None, float_precision: str = "fp32"):
    """(name, op, kind, precision, MACs, bytes) of every layer that costs time: the features both the
    estimate and the calibration fit read. `precision` forces one for all layers (a published
    INT8 timing of an FP32-exported architecture); else a layer is INT8 when its input comes from a
    DequantizeLinear."""
    model = _load_with_batch(Path(path), batch)
    shapes = _shapes(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    rows = []
    for index, node in enumerate(model.graph.node):
        if node.op_type in FREE_OPS:
            continue
        source = producers.get(node.input[0]) if node.input else None
        layer_precision = precision or ("int8" if source is not None and source.op_type == "DequantizeLinear"
                                        else float_precision)
        elements = sum(int(np.prod(shapes[t])) for t in list(node.input) + list(node.output) if t in shapes)
        rows.append((node.name or f"{node.op_type}_{index}", node.op_type, layer_kind(node, shapes), layer_precision,
                     _macs(node, shapes), elements * BYTES[layer_precision]))
    return rows


def peaks(target: Target) -> dict[str, float]:
    """Peak ops per second of each precision on `target`."""
    return {"int8": target.hardware.int8_tops * 1e12, "fp16": target.hardware.fp16_tflops * 1e12,
            "fp32": target.hardware.fp32_tflops * 1e12}


def layer_ms(kind: str, precision: str, macs: int, moved: int, target: Target) -> float:
    """One layer's time on `target`: calibrated where the target has efficiencies for `precision`."""
    bandwidth = target.hardware.memory_bandwidth_gbs * 1e9
    fitted = getattr(target.calibration, precision, None) if target.calibration is not None else None
    efficiency = getattr(fitted, kind) if fitted is not None else 1.0
    layer_us = fitted.layer_us if fitted is not None else target.hardware.layer_overhead_us
    if kind in MEMORY_BOUND:
        seconds = moved / (efficiency * bandwidth)
    else:
        seconds = 2 * macs / (efficiency * peaks(target)[precision])
    return seconds * 1000.0 + layer_us / 1000.0


def estimate_error(target: Target, precisions: set[str]) -> tuple[float, float, str]:
    """(low, high) of estimated / measured for this estimate, and what that range rests on."""
    calibration = target.calibration
    if calibration is not None and all(getattr(calibration, p, None) is not None for p in precisions):
        return calibration.error.low, calibration.error.high, (
            f"calibrated on {calibration.fitted_on}; error range from {calibration.error.points} timed points")
    low, high = ROOFLINE_ERROR
    return low, high, "uncalibrated roofline (its error on the published data)"


def estimate_layers(path: Path, target: Target, batch: int) -> list[LayerEstimate]:
    from edgekd.runtimes import backend

    float_precision = "fp32" if target.precision is Precision.FP32 else backend(target).float_precision
    return [LayerEstimate(name, op, kind, precision, macs, moved, layer_ms(kind, precision, macs, moved, target))
            for name, op, kind, precision, macs, moved in graph_layers(path, batch, float_precision=float_precision)]


def estimate_latency(path: Path, target: Target, batch: int | None = None) -> tuple[Latency, list[LayerEstimate]]:
    batch = batch or target.input.batch
    layers = estimate_layers(path, target, batch)
    total = sum(layer.ms for layer in layers)
    low, high, basis = estimate_error(target, {layer.precision for layer in layers})
    kind = "calibrated estimate" if basis.startswith("calibrated") else "roofline estimate"
    runtime = f"{kind} for {target.name} ({target.runtime.value}, {target.precision.value})"
    # p50 only: a roofline models the steady state, not the tail (scheduler preemption, DVFS,
    # thermal throttling, cache contention), and no source gives a p99/p50 factor that holds across
    # these devices. So p90/p99 stay None and the verdict marks the p99 check "not estimated".
    return Latency(total, None, None, "estimated", runtime, batch, 0, p50_low=total / high, p50_high=total / low,
                   basis=basis), layers
