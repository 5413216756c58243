"""Quantizer placement that ONNX Runtime's CPU kernels can use.

ONNX Runtime runs a convolution in INT8 (QLinearConv) only when the QDQ graph has it as
DequantizeLinear(input), DequantizeLinear(weight) -> Conv -> [Relu/Clip] -> QuantizeLinear, with every
consumer of the output a QuantizeLinear and the input and output of the same integer type. NNCF
places quantizers for OpenVINO, which fuses Conv + HardSwish/HardSigmoid: it quantizes the input of
the next layer, after the activation, and leaves the convolution's own output float. It also leaves
squeeze-excite convolutions unquantized, and makes post-ReLU tensors UINT8 but others INT8, so a
convolution from a signed tensor into a ReLU has mismatched types. ONNX Runtime then runs each of
those convolutions in float, between a dequantize and a quantize: slower than the FP32 model.

`place_for_onnxruntime` rewrites the exported graph so every convolution fuses:
  1. every activation QuantizeLinear/DequantizeLinear becomes UINT8: an INT8 tensor with zero point z
     is the same set of values as UINT8 with zero point z + 128 (lossless; UINT8 x INT8 is the x86
     kernels' native pair);
  2. a convolution output that reaches anything but a QuantizeLinear gets a QuantizeLinear ->
     DequantizeLinear pair, with its range from ONNX Runtime's MinMax calibrator run on the graph;
  3. a convolution whose input or weight has no quantizer gets one (input: calibrated; weight: INT8
     per output channel, symmetric), as squeeze-excite convolutions need.
  4. a Flatten of a 4-D map with more than one position, read by a Gemm (a grid classifier's head),
     reads the map channels-last, with the Gemm's weight columns permuted to match: the same
     function, but ONNX Runtime then cancels the UINT8 Transpose back to NCHW that it puts after a
     channels-last QLinearConv.
  5. a HardSwish between quantizers, x * HardSigmoid(x) (how PyTorch exports it), becomes
     x * (relu6(x + 3) / 6) in two integer ops, QLinearAdd and QLinearMul: ONNX Runtime has no
     quantized HardSwish, and ran it as DequantizeLinear, HardSigmoid, Mul and QuantizeLinear in float,
     four passes over the map. The Add's quantizer (scale 6/255, zero point 0) saturates to [0, 6],
     which is the relu6; the DequantizeLinear after it reads the same integers with scale 1/255,
     which is the division by 6. The gate is then rounded to 1/255 steps.
  6. a Gemm with quantized weights gets an INT32 bias (scale: input scale x weight scale), and its
     input's DequantizeLinear moves past the Flatten/Transpose between them: ONNX Runtime fuses it
     into QGemm only so (NNCF leaves the bias float and the Flatten on the float side).
  7. a weight DequantizeLinear that ONNX Runtime's optimised graph still runs (a layer it leaves
     float) is stored as the float weight it produces, so it is not dequantized again on every call.
  8. where a float convolution feeds quantized ones, or a quantized one feeds a float one (a layer
     kept float), ONNX Runtime transposes the UINT8 map between NCHW and its channels-last
     QLinearConv. With 2 threads that Transpose is much faster at some channel counts than at others
     (batch 64, 28x28: 12 channels ~590 us, 16 channels ~145 us; `benchmarks/int8_speed.py
     --transposes`), so the producing convolution gets zero filters up to the next multiple of 16 and
     its readers zero weights for them (group-1 convolutions only: a depthwise one's channels are its
     groups): the same function (the extra channels are exactly 0, as are their weights), another
     layout. It does not always pay (8 -> 16 doubles the readers' inputs), so `edgekd.export.int8_fit`
     keeps it only where the whole file measures faster.
Layers named in `keep_float` go the other way: their weight is dequantized into a float initializer,
so ONNX Runtime runs them in FP32 (mixed precision, chosen by measurement in `edgekd.export.int8_fit`).
"""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from edgekd.runfolder import atomic_output

LAYER_OPS = ("Conv", "Gemm", "MatMul")  # layers with a weight that INT8 can speed up
FUSING_ACTIVATIONS = ("Relu", "Clip")  # ONNX Runtime drops these when the QuantizeLinear after them clips the same
QUANTIZED_CONV_OPS = ("QLinearConv", "ConvInteger")
FLOAT_CONV_OPS = ("Conv", "FusedConv", "NhwcFusedConv")


@dataclass
class Placement:
    retyped: int = 0  # INT8 activation quantizers made UINT8
    outputs_quantized: list[str] = field(default_factory=list)
    inputs_quantized: list[str] = field(default_factory=list)
    weights_quantized: list[str] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)
    flattened_channels_last: list[str] = field(default_factory=list)  # Flatten nodes that read NHWC
    hardswish_in_uint8: list[str] = field(default_factory=list)  # HardSwish run as QLinearAdd + QLinearMul
    gemms_quantized: list[str] = field(default_factory=list)  # Gemms given what QGemm needs
    weights_stored_float: list[str] = field(default_factory=list)  # weight DequantizeLinears folded away
    channels_padded: list[str] = field(default_factory=list)  # "conv: 12 -> 16" at a layout change

    def as_dict(self) -> dict:
        return asdict(self)


def place_for_onnxruntime(path: Path, calibration: np.ndarray, keep_float: Iterable[str] = (),
                          batch: int = 32, pad_channels: bool = True) -> Placement:
    """Rewrite the QDQ graph at `path` in place (see the module docstring); `calibration` is a float32
    array of input images, `keep_float` the names of Conv/Gemm/MatMul nodes to run in FP32;
    `pad_channels=False` skips rewrite 8 (`edgekd.export.int8_fit` times the file both ways)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    keep = set(keep_float)
    placement = Placement()
    placement.retyped = _activations_to_uint8(graph)
    placement.flattened_channels_last = _flatten_channels_last(model)
    needs_range = _missing_quantizers(graph, keep)
    ranges = _calibrate(model, sorted({t for t, _ in needs_range}), calibration, batch) if needs_range else {}
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {init.name: init for init in graph.initializer}
    new_nodes: dict[int, list] = defaultdict(list)  # index of a node -> nodes to insert after it
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "Conv" and not (node.op_type in LAYER_OPS and node.name in keep):
            continue
        if node.name in keep:
            if _dequantize_weight(graph, node, producers, initializers):
                _bypass_input_quantizer(graph, node, producers)
                placement.kept_float.append(node.name)
            continue
        if node.input[1] in initializers:  # a float weight: no quantizer
            new_nodes[-1].append(_quantize_weight(graph, node, initializers[node.input[1]]))
            placement.weights_quantized.append(node.name)
        source = producers.get(node.input[0])
        if source is None or source.op_type != "DequantizeLinear":
            new_nodes[index - 1 if source is None else _index(graph, source)].extend(
                _qdq_pair(graph, node.input[0], ranges[node.input[0]], [node]))
            placement.inputs_quantized.append(node.name)
        if not _output_quantized(graph, node):
            consumers = [n for n in graph.node if node.output[0] in n.input]
            new_nodes[index].extend(_qdq_pair(graph, node.output[0], ranges[node.output[0]], consumers))
            placement.outputs_quantized.append(node.name)
    _insert(graph, new_nodes)
    placement.hardswish_in_uint8 = _hardswish_in_uint8(graph)
    placement.gemms_quantized = _quantized_gemms(graph, keep)
    placement.channels_padded = _pad_channels_at_layout_changes(graph) if pad_channels else []
    _remove_dead_nodes(graph)
    placement.weights_stored_float = _store_float_weights_onnxruntime_dequantizes(model)
    _remove_unused_initializers(graph)
    with atomic_output(path) as tmp:
        onnx.save(model, str(tmp))
    return placement


# ---------------------------------------------------------------- what is missing


def _consumers(graph, tensor: str) -> list:
    return [n for n in graph.node if tensor in n.input]


def _attribute(node, name: str, default):
    """A node's attribute value, or ONNX's default for it."""
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _output_quantized(graph, node) -> bool:
    """ONNX Runtime's rule: every consumer a QuantizeLinear, or one Relu/Clip whose consumers all are."""
    users = _consumers(graph, node.output[0])
    if not users or node.output[0] in {o.name for o in graph.output}:
        return False
    if len(users) == 1 and users[0].op_type in FUSING_ACTIVATIONS:
        after = _consumers(graph, users[0].output[0])
        return len(after) == 1 and after[0].op_type == "QuantizeLinear"
    return all(u.op_type == "QuantizeLinear" for u in users)


def _missing_quantizers(graph, keep: set[str]) -> list[tuple[str, str]]:
    """(tensor, why) for every convolution input or output that needs a calibrated range."""
    producers = {out: node for node in graph.node for out in node.output}
    missing = []
    for node in graph.node:
        if node.op_type != "Conv" or node.name in keep:
            continue
        source = producers.get(node.input[0])
        if source is None or source.op_type != "DequantizeLinear":
            missing.append((node.input[0], "input"))
        if not _output_quantized(graph, node):
            missing.append((node.output[0], "output"))
    return missing


# ---------------------------------------------------------------- rewrites


def _activations_to_uint8(graph) -> int:
    """Each INT8 activation QuantizeLinear (and the DequantizeLinears reading it) becomes UINT8.

    Zero point z becomes z + 128: the same representable values. After a Relu (non-negative
    values), an INT8 zero point 0 becomes a UINT8 zero point 0 with the same scale instead, so
    ONNX Runtime can still drop the Relu; its range then reaches 255 steps where it clipped at 127."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    created: dict[tuple[str, bool], str] = {}
    count = 0
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[0] in initializers:
            continue  # no zero point (UINT8 by default), or a weight (stays INT8)
        zp_name = node.input[2]
        if zp_name not in initializers or initializers[zp_name].data_type != 3:  # 3 = INT8
            continue
        source = producers.get(node.input[0])
        zero = numpy_helper.to_array(initializers[zp_name]).astype(np.int16)
        after_relu = source is not None and source.op_type == "Relu" and not zero.any()
        key = (zp_name, after_relu)
        if key not in created:
            created[key] = f"{zp_name}_uint8{'_relu' if after_relu else ''}"
            shifted = zero if after_relu else zero + 128
            graph.initializer.append(numpy_helper.from_array(shifted.astype(np.uint8), created[key]))
        node.input[2] = created[key]
        for reader in _consumers(graph, node.output[0]):
            if reader.op_type == "DequantizeLinear" and len(reader.input) > 2:
                reader.input[2] = created[key]
        count += 1
    return count


def _flatten_channels_last(model) -> list[str]:
    """Rewrite 4 (module docstring); returns the Flatten nodes rewritten. A Flatten already fed by a
    Transpose is left alone, so placing twice (all-INT8, then mixed) rewrites once."""
    from onnx import helper, numpy_helper, shape_inference

    graph = model.graph
    inferred = shape_inference.infer_shapes(model).graph
    shapes = {info.name: [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
              for info in list(inferred.value_info) + list(inferred.input)}
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    uses = Counter(name for node in graph.node for name in node.input)
    rewritten = []
    for node in list(graph.node):
        if node.op_type != "Flatten" or _attribute(node, "axis", 1) != 1:
            continue
        shape = shapes.get(node.input[0])
        source = producers.get(node.input[0])
        if not shape or len(shape) != 4 or None in shape[1:] or shape[2] * shape[3] == 1 or (
                source is not None and source.op_type == "Transpose"):
            continue
        users = _consumers(graph, node.output[0])
        if len(users) != 1 or users[0].op_type != "Gemm":
            continue
        trans_b = _attribute(users[0], "transB", 0)
        weight = _gemm_weight(users[0], trans_b, producers, initializers)
        if weight is None or uses[weight.name] != 1 or uses[users[0].input[1]] != 1:
            continue
        channels, height, width = shape[1:]
        values = numpy_helper.to_array(weight)
        if trans_b:  # (out, C*H*W): columns in C, H, W order -> H, W, C
            permuted = values.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
        else:  # (C*H*W, out)
            permuted = values.reshape(channels, height, width, -1).transpose(1, 2, 0, 3)
        weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(permuted).reshape(values.shape), weight.name))
        channels_last = f"{node.input[0]}_channels_last"
        graph.node.insert(_index(graph, node), helper.make_node(
            "Transpose", [node.input[0]], [channels_last], perm=[0, 2, 3, 1], name=f"{node.name}/channels_last"))
        node.input[0] = channels_last
        rewritten.append(node.name)
    return rewritten


def _gemm_weight(gemm, trans_b: int, producers: dict, initializers: dict):
    """The initializer behind a Gemm's weight, through its DequantizeLinear (and QuantizeLinear),
    if every quantizer on the way is per-tensor or per output channel; else None."""
    name = gemm.input[1]
    while name not in initializers:
        step = producers.get(name)
        if step is None or step.op_type not in ("DequantizeLinear", "QuantizeLinear"):
            return None
        axis = _attribute(step, "axis", 1)
        scale = initializers.get(step.input[1])
        if scale is None or (len(scale.dims) > 0 and max(scale.dims) > 1 and axis != (0 if trans_b else 1)):
            return None
        name = step.input[0]
    return initializers[name]


def _is_weight_quantizer(graph, tensor: str, initializers: dict) -> bool:
    """A DequantizeLinear reading a QuantizeLinear of an initializer (weights not yet folded)."""
    for node in graph.node:
        if tensor in node.output and node.op_type == "QuantizeLinear":
            return node.input[0] in initializers
    return False


def _qdq_pair(graph, tensor: str, value_range: tuple[float, float], consumers: list) -> list:
    """QuantizeLinear -> DequantizeLinear on `tensor` (UINT8, asymmetric over the range and 0), and
    `consumers` rewired to read the dequantized tensor."""
    from onnx import helper, numpy_helper

    low, high = min(float(value_range[0]), 0.0), max(float(value_range[1]), 0.0)
    scale = max((high - low) / 255.0, 1e-8)
    zero_point = int(np.clip(round(-low / scale), 0, 255))
    base = tensor.replace("/", "_").strip("_") + "_ortq"
    graph.initializer.extend([numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{base}.scale"),
                              numpy_helper.from_array(np.array(zero_point, dtype=np.uint8), f"{base}.zero_point")])
    quantized, restored = f"{base}.quantized", f"{base}.dequantized"
    for consumer in consumers:
        for i, name in enumerate(consumer.input):
            if name == tensor:
                consumer.input[i] = restored
    return [helper.make_node("QuantizeLinear", [tensor, f"{base}.scale", f"{base}.zero_point"], [quantized],
                             name=f"{base}/QuantizeLinear"),
            helper.make_node("DequantizeLinear", [quantized, f"{base}.scale", f"{base}.zero_point"], [restored],
                             name=f"{base}/DequantizeLinear")]


def _quantize_weight(graph, node, weight) -> object:
    """INT8 per-output-channel symmetric weight + DequantizeLinear feeding `node`, in the bits ONNX
    Runtime computes exactly on this CPU (`int8_weight_bits`: +-127, or +-63 without VNNI)."""
    from onnx import helper, numpy_helper

    from edgekd.runtimes.onnxruntime import int8_weight_bits

    top = 2 ** (int8_weight_bits() - 1) - 1
    values = numpy_helper.to_array(weight).astype(np.float32)
    flat = np.abs(values.reshape(values.shape[0], -1)).max(axis=1)
    scale = np.maximum(flat / top, 1e-12).astype(np.float32)
    shape = (-1,) + (1,) * (values.ndim - 1)
    quantized = np.clip(np.round(values / scale.reshape(shape)), -top, top).astype(np.int8)
    base = f"{weight.name}_int8"
    graph.initializer.extend([numpy_helper.from_array(quantized, base),
                              numpy_helper.from_array(scale, f"{base}.scale"),
                              numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{base}.zero_point")])
    restored = f"{base}.dequantized"
    node.input[1] = restored
    return helper.make_node("DequantizeLinear", [base, f"{base}.scale", f"{base}.zero_point"], [restored],
                            name=f"{base}/DequantizeLinear", axis=0)


def _dequantize_weight(graph, node, producers: dict, initializers: dict) -> bool:
    """Replace `node`'s DequantizeLinear(INT8 weight) by the float values it produces."""
    from onnx import numpy_helper

    dq = producers.get(node.input[1])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in initializers:
        return False
    name = f"{dq.input[0]}_float"
    graph.initializer.append(numpy_helper.from_array(_dequantized(dq, initializers), name))
    node.input[1] = name
    return True


def _dequantized(dq, initializers: dict) -> np.ndarray:
    """The float values a DequantizeLinear of an initializer produces."""
    from onnx import numpy_helper

    q = numpy_helper.to_array(initializers[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(initializers[dq.input[1]]).astype(np.float32)
    zp = (numpy_helper.to_array(initializers[dq.input[2]]).astype(np.float32)
          if len(dq.input) > 2 and dq.input[2] in initializers else np.zeros_like(scale))
    axis = _attribute(dq, "axis", 1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q - zp) * scale).astype(np.float32)


def _hardswish_in_uint8(graph) -> list[str]:
    """Rewrite 5 (module docstring): DequantizeLinear(x) -> HardSigmoid(1/6, 0.5) -> Mul with the same
    x -> QuantizeLinear only; returns the HardSigmoid nodes rewritten."""
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}

    def uint8_activation(dq) -> bool:
        return (dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] not in initializers
                and len(dq.input) > 2 and dq.input[2] in initializers and initializers[dq.input[2]].data_type == 2)

    new_nodes: dict[int, list] = defaultdict(list)
    rewritten = []
    for index, gate in enumerate(graph.node):
        if gate.op_type != "HardSigmoid" or abs(_attribute(gate, "alpha", 0.2) - 1 / 6) > 1e-6 or \
                abs(_attribute(gate, "beta", 0.5) - 0.5) > 1e-6:
            continue
        dq, users = producers.get(gate.input[0]), _consumers(graph, gate.output[0])
        if not uint8_activation(dq) or len(users) != 1 or users[0].op_type != "Mul":
            continue
        mul = users[0]
        other = producers.get(mul.input[1] if mul.input[0] == gate.output[0] else mul.input[0])
        if other is None or other.op_type != "DequantizeLinear" or list(other.input) != list(dq.input):
            continue
        after = _consumers(graph, mul.output[0])
        if not after or mul.output[0] in outputs or any(n.op_type != "QuantizeLinear" for n in after):
            continue
        if not rewritten:
            graph.initializer.extend([
                numpy_helper.from_array(np.array(3, dtype=np.uint8), "edgekd_hardswish.three"),
                numpy_helper.from_array(np.array(1.0, dtype=np.float32), "edgekd_hardswish.one"),
                numpy_helper.from_array(np.array(0, dtype=np.uint8), "edgekd_hardswish.zero_point"),
                numpy_helper.from_array(np.array(6 / 255, dtype=np.float32), "edgekd_hardswish.relu6_scale"),
                numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "edgekd_hardswish.gate_scale")])
        base = (gate.name or gate.output[0]).replace("/", "_").strip("_")
        zero = "edgekd_hardswish.zero_point"
        new_nodes[index].extend([
            helper.make_node("DequantizeLinear", ["edgekd_hardswish.three", "edgekd_hardswish.one", zero],
                             [f"{base}.three"], name=f"{base}/three"),
            helper.make_node("Add", [dq.output[0], f"{base}.three"], [f"{base}.plus_three"], name=f"{base}/add_three"),
            helper.make_node("QuantizeLinear", [f"{base}.plus_three", "edgekd_hardswish.relu6_scale", zero],
                             [f"{base}.relu6"], name=f"{base}/relu6"),
            helper.make_node("DequantizeLinear", [f"{base}.relu6", "edgekd_hardswish.gate_scale", zero],
                             [f"{base}.gate"], name=f"{base}/divide_by_six")])
        for i, name in enumerate(mul.input):
            if name == gate.output[0]:
                mul.input[i] = f"{base}.gate"
        rewritten.append(gate.name or gate.output[0])
    _insert(graph, new_nodes)
    return rewritten


def _quantized_gemms(graph, keep: set[str]) -> list[str]:
    """Rewrite 6 (module docstring); returns the Gemm nodes rewritten. Gemms in `keep` stay float."""
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    new_nodes: dict[int, list] = defaultdict(list)
    rewritten = []
    for gemm in list(graph.node):
        if gemm.op_type != "Gemm" or gemm.name in keep or len(gemm.input) < 3 or gemm.input[2] not in initializers:
            continue
        weight_dq = producers.get(gemm.input[1])
        if weight_dq is None or weight_dq.op_type != "DequantizeLinear" or weight_dq.input[0] not in initializers:
            continue
        trans_b = _attribute(gemm, "transB", 0)
        if _gemm_weight(gemm, trans_b, producers, initializers) is None:  # scales along the wrong axis
            continue
        chain, tensor = [], gemm.input[0]  # the shape ops between the input's DequantizeLinear and the Gemm
        while (step := producers.get(tensor)) is not None and step.op_type in ("Flatten", "Reshape", "Transpose") \
                and len(_consumers(graph, step.output[0])) == 1:
            chain.insert(0, step)
            tensor = step.input[0]
        input_dq = producers.get(tensor)
        if input_dq is None or input_dq.op_type != "DequantizeLinear" or input_dq.input[0] in initializers or \
                input_dq.input[1] not in initializers or numpy_helper.to_array(initializers[input_dq.input[1]]).size != 1:
            continue
        base = (gemm.name or gemm.output[0]).replace("/", "_").strip("_")
        if chain:  # the shape ops work on the integers; one DequantizeLinear after them
            chain[0].input[0] = input_dq.input[0]
            moved = f"{base}.input_dequantized"
            new_nodes[_index(graph, chain[-1])].append(helper.make_node(
                "DequantizeLinear", [chain[-1].output[0], *input_dq.input[1:]], [moved], name=f"{base}/input_dq"))
            gemm.input[0] = moved
        input_scale = float(numpy_helper.to_array(initializers[input_dq.input[1]]))
        weight_scale = numpy_helper.to_array(initializers[weight_dq.input[1]]).astype(np.float64)
        bias = numpy_helper.to_array(initializers[gemm.input[2]]).astype(np.float64)
        scale = np.broadcast_to(input_scale * weight_scale, bias.shape).astype(np.float32)
        graph.initializer.extend([
            numpy_helper.from_array(np.round(bias / scale).astype(np.int32), f"{base}.bias_int32"),
            numpy_helper.from_array(scale, f"{base}.bias_int32.scale"),
            numpy_helper.from_array(np.zeros(bias.shape, dtype=np.int32), f"{base}.bias_int32.zero_point")])
        new_nodes[-1].append(helper.make_node(
            "DequantizeLinear", [f"{base}.bias_int32", f"{base}.bias_int32.scale", f"{base}.bias_int32.zero_point"],
            [f"{base}.bias_dequantized"], name=f"{base}/bias_dq", axis=0))
        gemm.input[2] = f"{base}.bias_dequantized"
        rewritten.append(gemm.name or gemm.output[0])
    _insert(graph, new_nodes)
    return rewritten


TRANSPOSE_CHANNELS = 16  # rewrite 8: ONNX Runtime's UINT8 NCHW<->NHWC Transpose is fast at multiples of this


def _pad_channels_at_layout_changes(graph) -> list[str]:
    """Rewrite 8 (module docstring): Conv -> [Relu/Clip] -> QuantizeLinear -> DequantizeLinear -> Convs,
    all of group 1 (a depthwise convolution's channels are its groups), one side float and the other
    quantized, padded to a multiple of TRANSPOSE_CHANNELS; returns "conv: before -> after" for each."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    padded = []
    for conv in [n for n in graph.node if n.op_type == "Conv" and _attribute(n, "group", 1) == 1]:
        chain = _quantizer_chain_after(graph, conv, outputs)
        scale = None if chain is None else initializers.get(producers[chain[-2]].input[1])
        if scale is None or numpy_helper.to_array(scale).size != 1:
            continue  # padded channels need no scale of their own only where the map has one scale
        readers = _consumers(graph, chain[-1])
        if not readers or any(r.op_type != "Conv" or r.input[0] != chain[-1] or _attribute(r, "group", 1) != 1
                              for r in readers):
            continue
        weights = [_conv_weight(graph, c, producers, initializers) for c in (conv, *readers)]
        if any(w is None for w in weights) or all(w[1] == weights[0][1] for w in weights[1:]):
            continue  # a weight not in a form we can pad, or no float/quantized change between them
        channels = numpy_helper.to_array(initializers[weights[0][0]]).shape[0]
        wanted = -(-channels // TRANSPOSE_CHANNELS) * TRANSPOSE_CHANNELS
        if wanted == channels:
            continue
        _pad_conv(graph, conv, producers, initializers, axis=0, size=wanted)
        for reader in readers:
            _pad_conv(graph, reader, producers, initializers, axis=1, size=wanted)
        stale = {conv.output[0], *chain}
        for info in [v for v in graph.value_info if v.name in stale]:  # shapes ONNX Runtime infers again
            graph.value_info.remove(info)
        padded.append(f"{conv.name or conv.output[0]}: {channels} -> {wanted}")
    return padded


def _quantizer_chain_after(graph, conv, outputs: set[str]) -> list[str] | None:
    """The tensors of conv -> [Relu/Clip] -> QuantizeLinear -> DequantizeLinear, each read
    by the next alone and none a graph output; None where the output takes another path."""
    tensors, node = [], conv
    for op in (FUSING_ACTIVATIONS, ("QuantizeLinear",), ("DequantizeLinear",)):
        users = _consumers(graph, node.output[0])
        if node.output[0] in outputs or len(users) != 1:
            return None
        if users[0].op_type not in op:
            if op is FUSING_ACTIVATIONS:
                continue  # no activation between the convolution and its quantizer
            return None
        node = users[0]
        tensors.append(node.output[0])
    return tensors


def _conv_weight(graph, conv, producers: dict, initializers: dict) -> tuple[str, bool] | None:
    """(the initializer holding `conv`'s weight, whether it is quantized), where its weight and bias
    are in a form `_pad_conv` can pad: an initializer, or a DequantizeLinear of one (per output
    channel, read by `conv` alone); else None."""
    def dequantized(tensor: str):
        dq = producers.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or not all(i in initializers for i in dq.input if i) or \
                _attribute(dq, "axis", 1) != 0 or len(_consumers(graph, tensor)) != 1:
            return None
        return dq

    if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in initializers and not dequantized(conv.input[2]):
        return None
    if conv.input[1] in initializers:
        return conv.input[1], False
    dq = dequantized(conv.input[1])
    return None if dq is None else (dq.input[0], True)


def _pad_conv(graph, conv, producers: dict, initializers: dict, axis: int, size: int) -> None:
    """Zeros appended along `axis` of `conv`'s weight (0: output channels, with their bias, scales
    of 1 and zero points of 0; 1: input channels). New initializers: the old ones may be shared."""
    from onnx import numpy_helper

    def padded(name: str, along: int, fill: float = 0.0) -> str:
        """`name` padded along `along` to `size`: made once, shared by every layer that asks for it
        (NNCF shares zero-point tensors between layers of the same width)."""
        created = f"{name}_padded{along}_{size}"
        if created not in initializers:
            values = numpy_helper.to_array(initializers[name])
            width = [(0, 0)] * values.ndim
            width[along] = (0, size - values.shape[along])
            init = numpy_helper.from_array(np.pad(values, width, constant_values=fill).astype(values.dtype), created)
            graph.initializer.append(init)
            initializers[created] = init
        return created

    def pad_operand(node, index: int) -> None:  # a weight or bias: an initializer or its DequantizeLinear
        if node.input[index] in initializers:
            node.input[index] = padded(node.input[index], axis if index == 1 else 0)
            return
        dq = producers[node.input[index]]
        dq.input[0] = padded(dq.input[0], axis if index == 1 else 0)
        for position, fill in ((1, 1.0), (2, 0.0)):  # per-channel scales and zero points, output channels only
            if axis == 0 and len(dq.input) > position and dq.input[position] and \
                    numpy_helper.to_array(initializers[dq.input[position]]).size > 1:
                dq.input[position] = padded(dq.input[position], 0, fill)

    pad_operand(conv, 1)
    if axis == 0 and len(conv.input) > 2 and conv.input[2]:
        pad_operand(conv, 2)


def _store_float_weights_onnxruntime_dequantizes(model) -> list[str]:
    """Rewrite 7 (module docstring): returns the DequantizeLinear nodes folded into float weights."""
    import onnx
    from onnx import numpy_helper

    from edgekd.runtimes.onnxruntime import open_session

    graph = model.graph
    with tempfile.TemporaryDirectory() as folder:
        source, optimized = Path(folder) / "placed.onnx", Path(folder) / "optimized.onnx"
        onnx.save(model, str(source))
        open_session(source, 1, optimized_path=optimized)
        runs = onnx.load(str(optimized)).graph
    constants = {init.name for init in runs.initializer}
    still_run = {n.name for n in runs.node if n.op_type == "DequantizeLinear" and n.input[0] in constants}
    initializers = {init.name: init for init in graph.initializer}
    folded = []
    for dq in list(graph.node):
        if dq.op_type != "DequantizeLinear" or dq.name not in still_run or dq.input[0] not in initializers:
            continue
        if any(c.op_type == "QuantizeLinear" for c in _consumers(graph, dq.output[0])):
            continue
        graph.initializer.append(numpy_helper.from_array(_dequantized(dq, initializers), dq.output[0]))
        graph.node.remove(dq)
        folded.append(dq.name)
    return folded


def _remove_unused_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output} | \
        {i.name for i in graph.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _bypass_input_quantizer(graph, node, producers: dict) -> None:
    """A float layer reads the model's input itself when the Q -> DQ pair on it serves that layer alone
    (elsewhere the pair stays: it is the previous layer's output quantizer, which its fusion needs)."""
    dq = producers.get(node.input[0])
    if dq is None or dq.op_type != "DequantizeLinear" or len(_consumers(graph, dq.output[0])) != 1:
        return
    q = producers.get(dq.input[0])
    if (q is not None and q.op_type == "QuantizeLinear" and len(_consumers(graph, q.output[0])) == 1
            and q.input[0] in {i.name for i in graph.input}):
        node.input[0] = q.input[0]


def _remove_dead_nodes(graph) -> None:
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def _index(graph, node) -> int:
    return next(i for i, n in enumerate(graph.node) if n is node)


def _insert(graph, new_nodes: dict[int, list]) -> None:
    """Insert each list after the node at its index (-1: at the front), keeping topological order."""
    if not new_nodes:
        return
    ordered = list(new_nodes.get(-1, []))
    for index, node in enumerate(graph.node):
        ordered.append(node)
        ordered.extend(new_nodes.get(index, []))
    del graph.node[:]
    graph.node.extend(ordered)


# ---------------------------------------------------------------- calibration


def _calibrate(model, tensors: list[str], images: np.ndarray, batch: int) -> dict[str, tuple[float, float]]:
    """Min/max of `tensors` over `images`, from ONNX Runtime's MinMax calibrator."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    input_name = model.graph.input[0].name

    class Images(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: np.ascontiguousarray(images[i:i + batch], dtype=np.float32)}
                                 for i in range(0, len(images), batch)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "model.onnx"
        onnx.save(model, str(source))
        calibrator = create_calibrator(source, op_types_to_calibrate=["Conv"],
                                       augmented_model_path=str(Path(folder) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        calibrator.collect_data(Images())
        data = calibrator.compute_data()
    ranges = {}
    for tensor in tensors:
        low, high = data[tensor].range_value
        ranges[tensor] = (float(np.min(low)), float(np.max(high)))
    return ranges


# ---------------------------------------------------------------- what ONNX Runtime made of it


def conv_counts(path: Path, threads: int = 1) -> dict[str, int]:
    """Quantized vs float convolutions in ONNX Runtime's optimised graph of `path` (the graph it runs)."""
    import onnx

    from edgekd.runtimes.onnxruntime import open_session

    with tempfile.TemporaryDirectory() as folder:
        optimized = Path(folder) / "optimized.onnx"
        open_session(Path(path), threads, optimized_path=optimized)
        ops = Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
    return {"quantized": sum(ops[op] for op in QUANTIZED_CONV_OPS), "float": sum(ops[op] for op in FLOAT_CONV_OPS)}
