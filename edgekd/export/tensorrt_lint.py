"""Will TensorRT build this QDQ graph as INT8? A static check with `onnx` alone, so it runs on any
machine: a graph that fails here would fail on the device, after the run folder was copied there.

TensorRT's explicit quantization takes the scales from the graph's QuantizeLinear/DequantizeLinear
pairs. Its ONNX parser (onnx-tensorrt's QuantDequantLinearHelper) rejects a non-zero INT8 zero point
and a scale that is not positive; a UINT8 zero point it accepts with a warning and reads as INT8, which
clips a 0..255 tensor at 127: the engine builds and is silently wrong, so that is caught here too.
Per-output-channel weight scales keep INT8 accuracy; per-channel Q/DQ needs opset 13.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekd.errors import BadInputError

# onnx-tensorrt's docs/operators.md support matrix for TensorRT 10 (the rows marked Y in the 10.15
# edition), less four operators that ONNX defines only from opset 23 on (Attention,
# RMSNormalization, RotaryEmbedding, TensorScatter): TensorRT 10.0 parses opsets 9 to 20, and a
# Jetson's JetPack ships an early 10.x, so the set is what every TensorRT 10 release can parse.
TENSORRT_10_ONNX_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
    "AveragePool", "BatchNormalization", "BlackmanWindow", "Cast", "CastLike", "Ceil", "Celu", "Clip",
    "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum",
    "DeformConv", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf",
    "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu",
    "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
    "GridSample", "GroupNormalization", "GRU", "HammingWindow", "HannWindow", "HardSigmoid",
    "HardSwish", "Hardmax", "Identity", "If", "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN",
    "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN",
    "LSTM", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean",
    "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero",
    "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear",
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence",
    "RNN", "RoiAlign", "Round", "STFT", "ScaledTanh", "Scan", "Scatter", "ScatterElements",
    "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice",
    "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan",
    "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where",
    "Xor",
})
OPERATOR_SETS = {"10": TENSORRT_10_ONNX_OPS}
MIN_OPSET = 13  # QuantizeLinear/DequantizeLinear gained the per-channel `axis` attribute in opset 13
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")  # their input 1 is the weight
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class QdqReport:
    ok: bool
    problems: list[str]  # one line each, naming the node
    quantize_nodes: int
    dequantize_nodes: int
    opset: int
    tensorrt_version: str

    def as_dict(self) -> dict:
        return asdict(self)


def check_tensorrt_qdq(onnx_path: Path, tensorrt_version: str = "10") -> QdqReport:
    """Everything in the graph that would stop TensorRT `tensorrt_version` building it as INT8."""
    import onnx

    ops = _operator_set(tensorrt_version)
    try:
        model = onnx.load(str(onnx_path))
    except FileNotFoundError:
        raise BadInputError(f"ONNX file not found: {onnx_path}") from None
    except Exception as err:  # onnx raises DecodeError and friends for a file that is not ONNX
        raise BadInputError(f"{onnx_path}: not a readable ONNX model ({type(err).__name__})") from None
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)
    problems = []
    if opset < MIN_OPSET:
        problems.append(f"opset {opset}: TensorRT's per-channel QuantizeLinear/DequantizeLinear needs opset "
                        f"{MIN_OPSET} or later (export with opset >= {MIN_OPSET})")
    constants = _constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    labels = {id(node): _label(node, i) for i, node in enumerate(graph.node)}
    for node in graph.node:
        label = labels[id(node)]
        if node.domain not in DEFAULT_DOMAINS:
            problems.append(f"node {label}: custom op {node.domain}::{node.op_type}; "
                            "TensorRT would need a plugin for it")
        elif node.op_type not in ops:
            problems.append(f"node {label}: op {node.op_type} is not among TensorRT {tensorrt_version}'s "
                            "supported ONNX operators")
        if node.op_type in QDQ_OPS:
            problems += _qdq_problems(node, label, constants)
        if node.op_type in WEIGHT_OPS and len(node.input) > 1:
            problems += _weight_scale_problems(node, label, constants, producers, labels)
    counts = {op: sum(n.op_type == op for n in graph.node) for op in QDQ_OPS}
    return QdqReport(not problems, problems, counts["QuantizeLinear"], counts["DequantizeLinear"], opset,
                     tensorrt_version)


def raise_if_failed(report: QdqReport, path: Path) -> None:
    """One line for the CLI: the first problem and how many more there are."""
    if report.ok:
        return
    more = len(report.problems) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    raise BadInputError(f"{path}: not ready for a TensorRT {report.tensorrt_version} INT8 engine: "
                        f"{report.problems[0]}{suffix}")


def _operator_set(version: str) -> frozenset[str]:
    major = str(version).split(".")[0]
    if major not in OPERATOR_SETS:
        raise BadInputError(f"no ONNX operator list for TensorRT {version}; known: {', '.join(OPERATOR_SETS)}")
    return OPERATOR_SETS[major]


def _label(node, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _constants(graph) -> dict[str, np.ndarray]:
    """Initializers, Constant outputs and Identity copies of either (the exporter emits all three)."""
    from onnx import helper, numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(helper.get_attribute_value(attr))
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _qdq_problems(node, label: str, constants: dict[str, np.ndarray]) -> list[str]:
    where = f"node {label} (input '{node.input[0]}')"
    scale = constants.get(node.input[1])
    if scale is not None and not (scale > 0).all():
        return [f"{where}: a scale of {float(scale.min()):g}; TensorRT needs every scale positive"]
    if len(node.input) < 3 or not node.input[2]:
        return []  # no zero point: TensorRT takes it as int8 0
    zero_point = constants.get(node.input[2])
    if zero_point is None:
        return [f"{where}: zero point '{node.input[2]}' is not a constant, so it cannot be shown to be 0"]
    flat = zero_point.ravel()
    nonzero = flat[flat != 0]
    shown = int(nonzero[0]) if nonzero.size else 0
    if zero_point.dtype == np.uint8 and nonzero.size:
        return [f"{where}: zero point {shown} (uint8); TensorRT rejects non-zero zero points and has no UINT8 "
                "quantization: it needs symmetric INT8 (int8 zero point 0)"]
    if zero_point.dtype == np.uint8:
        return [f"{where}: zero point 0 (uint8); TensorRT has no UINT8 quantization and reads it as INT8, "
                "clipping at half the range: it needs symmetric INT8 (int8 zero point 0)"]
    if zero_point.dtype != np.int8:
        return [f"{where}: zero point of type {zero_point.dtype}, TensorRT INT8 needs an int8 zero point 0"]
    if nonzero.size:
        return [f"{where}: zero point {shown}, TensorRT needs symmetric INT8 (zero point 0)"]
    return []


def _weight_scale_problems(node, label: str, constants: dict[str, np.ndarray], producers: dict,
                           labels: dict[int, str]) -> list[str]:
    """A weight's DequantizeLinear should hold one scale per output channel, on that channel's axis."""
    dq = producers.get(node.input[1])
    if dq is None or dq.op_type != "DequantizeLinear":
        return []
    weight = constants.get(dq.input[0])
    source = producers.get(dq.input[0])
    if weight is None and source is not None and source.op_type == "QuantizeLinear":
        weight = constants.get(source.input[0])  # Q -> DQ on a float initializer (fake-quant export)
    if weight is None or weight.ndim < 2:
        return []  # DQ of an activation (MatMul of two tensors): not a weight
    axis = _output_channel_axis(node, weight.ndim)
    channels = weight.shape[axis]
    where = f"node {labels[id(dq)]} (weight of {node.op_type} {label})"
    scale = constants.get(dq.input[1])
    if scale is None:
        return [f"{where}: the scale is not a constant, so per-channel weight scales cannot be checked"]
    if scale.size == 1:
        if channels > 1:
            return [f"{where}: one per-tensor scale for {channels} output channels; quantize weights per "
                    f"output channel (axis {axis}) for TensorRT INT8"]
        return []
    dq_axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)  # ONNX's default axis is 1
    dq_axis = dq_axis + weight.ndim if dq_axis < 0 else dq_axis
    if dq_axis != axis or scale.size != channels:
        return [f"{where}: {scale.size} scales on axis {dq_axis}, but the {channels} output channels are "
                f"on axis {axis}"]
    return []


def _output_channel_axis(node, ndim: int) -> int:
    """Conv weights are (out, in, k...); Gemm's B is (out, in) with transB=1 (PyTorch's Linear), else
    (in, out); MatMul's B is (..., in, out)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return ndim - 1
