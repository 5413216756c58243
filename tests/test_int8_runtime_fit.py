"""INT8 that fits the runtime that runs it: every convolution of the CPU students becomes a quantized
convolution in ONNX Runtime's optimised graph (HardSwish, HardSigmoid and squeeze-excite included),
the shipped precision is the faster one, and OpenVINO runs the same files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch.utils.data import TensorDataset

from edgekd.config import ActivationScheme, load_target
from edgekd.export.ort_qdq import conv_counts, place_for_onnxruntime
from edgekd.training.fold import fold_batchnorm
from edgekd.models import create_model
from edgekd.export.onnx_file import export_onnx
from edgekd.verify.ship import Shipped, choose_precision, shipped_warning
from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner, store_int8_weights
from edgekd.stages.quantize import quantize_with_nncf, strip_to_qdq

# small inputs keep it to seconds; random weights: this is about the graph's structure
MODELS = {"edgekd_cnn": (1, 28, 28), "edgekd_cnn_fc": (1, 28, 28), "edgekd_resnet18": (3, 32, 32), "edgekd_mobilenet_v3_small": (3, 32, 32)}


def settle_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """BatchNorm statistics of `images`, so a randomly initialised network's logits are not ~0
    (torchvision's MobileNetV3 gives 1e-10 with its initial statistics), then eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the passes below
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(images)
    return model.eval()


def _int8_and_fp32(arch: str, folder: Path, width: float = 1.0) -> tuple[Path, Path, np.ndarray]:
    shape = MODELS[arch]
    torch.manual_seed(0)
    model = create_model(arch, 10, shape, width=width) if width != 1.0 else create_model(arch, 10, shape)
    images = torch.randn(16, *shape)
    settle_batchnorm(model, images)
    calibration = TensorDataset(images, torch.zeros(16, dtype=torch.long))
    quantized = quantize_with_nncf(model, calibration, 16, ActivationScheme.SYMMETRIC, batch_size=8)
    int8 = store_int8_weights(export_onnx(strip_to_qdq(quantized, images), images, folder / f"{arch}.int8.onnx"))
    fp32 = export_onnx(fold_batchnorm(model)[0], images, folder / f"{arch}.fp32.onnx")
    return int8, fp32, images.numpy()


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    return request.param, *_int8_and_fp32(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def student_files(tmp_path_factory):
    """edgekd_cnn's NNCF INT8 and FP32 files, quantized once; tests copy them before rewriting."""
    return _int8_and_fp32("edgekd_cnn", tmp_path_factory.mktemp("student"))


@pytest.fixture
def student(student_files, tmp_path):
    int8, fp32, images = student_files
    return Path(shutil.copy(int8, tmp_path / int8.name)), Path(shutil.copy(fp32, tmp_path / fp32.name)), images


def test_every_convolution_runs_quantized_in_onnxruntime(exported):
    arch, int8, fp32, images = exported
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(fp32)).graph.node)
    if arch == "edgekd_mobilenet_v3_small":  # what the rewrite fixes: NNCF quantizes after HardSwish, not before it
        assert conv_counts(int8)["float"] > 10
    place_for_onnxruntime(int8, images)
    assert conv_counts(int8) == {"quantized": convs, "float": 0}
    int8_logits = OnnxRuntimeRunner(int8).run(images)
    fp32_logits = OnnxRuntimeRunner(fp32).run(images)
    assert np.isfinite(int8_logits).all()
    # the INT8 graph still computes the FP32 model: logits correlate strongly on random weights
    assert np.corrcoef(int8_logits.ravel(), fp32_logits.ravel())[0, 1] > 0.9


def test_keep_float_runs_the_named_layers_in_fp32(student):
    int8, _, images = student
    first = next(n.name for n in onnx.load(str(int8)).graph.node if n.op_type == "Conv")
    placement = place_for_onnxruntime(int8, images, keep_float=[first])
    assert placement.kept_float == [first]
    assert conv_counts(int8) == {"quantized": 3, "float": 1}


def test_layers_stay_float_only_when_the_whole_file_gets_faster(student):
    """The per-layer profile proposes float layers; the mixed file is kept only if it beats the
    all-INT8 file timed side by side, else the all-INT8 file is restored byte for byte."""
    import re

    from edgekd.export.int8_fit import _mix_if_faster

    int8, _, images = student
    place_for_onnxruntime(int8, images)
    all_int8 = int8.read_bytes()
    first = next(n.name for n in onnx.load(str(int8)).graph.node if n.op_type == "Conv")
    keep, facts = _mix_if_faster(int8, images, [first], load_target("host-cpu"))
    how = facts["mixed_precision"]
    mixed_ms, int8_ms = map(float, re.search(r"float: ([\d.]+) ms vs all-INT8 ([\d.]+) ms", how).groups())
    if keep:
        assert keep == [first] and how.startswith("chosen") and mixed_ms < int8_ms
        assert conv_counts(int8) == {"quantized": 3, "float": 1}
    else:
        assert how.startswith("not chosen") and mixed_ms >= int8_ms
        assert int8.read_bytes() == all_int8 and conv_counts(int8)["float"] == 0


def test_precision_follows_the_estimate_where_the_target_is_not_here(student):
    """mobile-cpu (aarch64) cannot be measured on this x86 host: both files are estimated and the
    faster one ships, saying so."""
    int8, fp32, images = student
    place_for_onnxruntime(int8, images)
    shipped = choose_precision(fp32, int8, load_target("mobile-cpu"))
    assert shipped.source == "estimated"
    assert shipped.file == (int8.name if shipped.int8_ms <= shipped.fp32_ms else fp32.name)
    assert not shipped.slower_than_alternative and shipped_warning(shipped) is None


def test_precision_is_measured_on_this_host(student):
    int8, fp32, images = student
    place_for_onnxruntime(int8, images)
    shipped = choose_precision(fp32, int8, load_target("host-cpu"))
    assert shipped.source == "measured"
    assert shipped.precision in ("int8", "fp32") and shipped.int8_ms > 0 and shipped.fp32_ms > 0
    assert not shipped.slower_than_alternative


def test_a_slower_shipped_file_is_warned_about():
    slower = Shipped("student.int8.onnx", "int8", "TensorRT builds its engine from the INT8 graph", 2.0, 1.0,
                     "estimated")
    assert "WARNING" in shipped_warning(slower) and "slower than FP32" in shipped_warning(slower)


def test_openvino_runs_the_int8_file_and_its_ir(student, tmp_path):
    pytest.importorskip("openvino")
    from edgekd.export.openvino_ir import export_openvino_ir
    from edgekd.runtimes.openvino import OpenVinoRunner

    int8, _, images = student
    xml, weights = export_openvino_ir(int8, tmp_path / "student.int8.xml")
    assert xml.is_file() and weights.is_file()
    reference = OnnxRuntimeRunner(int8).run(images)
    for path in (int8, xml):
        runner = OpenVinoRunner(path, threads=2)
        assert runner.description.startswith("openvino-cpu")
        logits = runner.run(images)
        assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.9
        assert runner.measure(4, max_seconds=0.5).source == "measured"


def _optimised_ops(path: Path, folder: Path) -> list[str]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimised.onnx")
    options.log_severity_level = 3
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(folder / "optimised.onnx")).graph.node]


def test_a_grid_classifier_reads_its_map_channels_last_in_int8(tmp_path, monkeypatch):
    """edgekd_cnn_fc's head flattens a 7x7 map into a Gemm: placed for ONNX Runtime, the Flatten
    reads the channels-last QLinearConv output (the Gemm's columns permuted to match), so ORT's
    optimised graph has no Transpose back to NCHW, and the logits are those of the plain placement."""
    int8, _, images = _int8_and_fp32("edgekd_cnn_fc", tmp_path)
    model = onnx.load(str(int8))
    placed_plain = tmp_path / "plain.onnx"
    shutil.copy(int8, placed_plain)
    placement = place_for_onnxruntime(int8, images)
    assert len(placement.flattened_channels_last) == 1
    assert place_for_onnxruntime(int8, images).flattened_channels_last == []  # placing again rewrites once
    from edgekd.export import ort_qdq

    with monkeypatch.context() as patch:  # the same placement without this rewrite: the reference
        patch.setattr(ort_qdq, "_flatten_channels_last", lambda model: [])
        place_for_onnxruntime(placed_plain, images)
    assert "Flatten" in [n.op_type for n in model.graph.node]
    np.testing.assert_allclose(OnnxRuntimeRunner(int8).run(images), OnnxRuntimeRunner(placed_plain).run(images),
                               atol=1e-5)
    plain_ops, channels_last_ops = _optimised_ops(placed_plain, tmp_path), _optimised_ops(int8, tmp_path)
    assert plain_ops.count("Transpose") == channels_last_ops.count("Transpose") + 1


def test_hardswish_and_the_classifier_run_in_integer_ops(tmp_path, monkeypatch):
    """MobileNetV3's HardSwish, x * HardSigmoid(x) between quantizers, runs in ONNX Runtime as
    QLinearAdd + QLinearMul instead of float DequantizeLinear/HardSigmoid/Mul/QuantizeLinear, and its
    classifier's Gemms as QGemm: ORT's optimised graph dequantizes no weight on each call."""
    from edgekd.export import ort_qdq

    int8, fp32, images = _int8_and_fp32("edgekd_mobilenet_v3_small", tmp_path)
    reference = tmp_path / "without.onnx"
    shutil.copy(int8, reference)
    with monkeypatch.context() as patch:
        patch.setattr(ort_qdq, "_hardswish_in_uint8", lambda graph: [])
        patch.setattr(ort_qdq, "_quantized_gemms", lambda graph, keep: [])
        patch.setattr(ort_qdq, "_store_float_weights_onnxruntime_dequantizes", lambda model: [])
        place_for_onnxruntime(reference, images)
    placement = place_for_onnxruntime(int8, images)
    rewritten = len(placement.hardswish_in_uint8)
    assert rewritten >= 10  # every HardSwish of the feature extractor (the classifier's reads a Gemm)
    before, after = _optimised_ops(reference, tmp_path), _optimised_ops(int8, tmp_path)
    assert after.count("HardSigmoid") == before.count("HardSigmoid") - rewritten  # squeeze-excite gates remain
    assert after.count("QLinearAdd") == before.count("QLinearAdd") + rewritten
    assert after.count("QLinearMul") == before.count("QLinearMul") + rewritten
    assert (before.count("Gemm"), after.count("Gemm"), after.count("QGemm")) == (2, 0, 2)
    assert len(placement.gemms_quantized) == 2 and placement.weights_stored_float == []
    assert conv_counts(int8) == {"quantized": 52, "float": 0}
    optimised = onnx.load(str(tmp_path / "optimised.onnx")).graph
    constants = {init.name for init in optimised.initializer}
    assert not [n.name for n in optimised.node if n.op_type == "DequantizeLinear" and n.input[0] in constants]
    # the gate is rounded to 1/255 steps: the file stays as close to the FP32 model as before
    ours, theirs, exact = (OnnxRuntimeRunner(path).run(images) for path in (int8, reference, fp32))
    closeness = [np.corrcoef(logits.ravel(), exact.ravel())[0, 1] for logits in (ours, theirs)]
    assert closeness[0] > closeness[1] - 0.01, closeness
    again = place_for_onnxruntime(int8, images)  # placing again rewrites once
    assert again.hardswish_in_uint8 == [] and again.gemms_quantized == []


def test_a_layer_onnxruntime_leaves_float_stores_a_float_weight(tmp_path, monkeypatch):
    """Without the QGemm rewrite the classifier's Gemms stay float in ORT: their weights are then
    stored as float, not dequantized from INT8 on every call."""
    from edgekd.export import ort_qdq

    int8, _, images = _int8_and_fp32("edgekd_mobilenet_v3_small", tmp_path)
    before = OnnxRuntimeRunner(int8).run(images)
    monkeypatch.setattr(ort_qdq, "_quantized_gemms", lambda graph, keep: [])
    placement = place_for_onnxruntime(int8, images)
    assert len(placement.weights_stored_float) == 2  # the two classifier Gemms' weights
    _optimised_ops(int8, tmp_path)
    optimised = onnx.load(str(tmp_path / "optimised.onnx")).graph
    constants = {init.name for init in optimised.initializer}
    assert not [n.name for n in optimised.node if n.op_type == "DequantizeLinear" and n.input[0] in constants]
    assert np.corrcoef(OnnxRuntimeRunner(int8).run(images).ravel(), before.ravel())[0, 1] > 0.9


def test_a_float_layer_feeding_int8_ones_is_padded_to_sixteen_channels(tmp_path):
    """A pruned student's first convolution (12 channels) kept float: ONNX Runtime transposes its
    UINT8 output to channels-last for the next QLinearConv, a Transpose much faster at 16 channels.
    The placement gives it 4 zero filters (and the reader zero weights for them): the same logits
    exactly, 16 channels at the change of layout, and nothing padded where the layout does not change."""
    int8, _, images = _int8_and_fp32("edgekd_cnn_fc", tmp_path, width=0.75)  # 12 / 24 channels
    assert place_for_onnxruntime(int8, images).channels_padded == []  # all INT8: one layout throughout
    convs = [n for n in onnx.load(str(int8)).graph.node if n.op_type == "Conv"]
    first, second = convs[0].name, convs[1].name
    reference = Path(shutil.copy(int8, tmp_path / "unpadded.onnx"))
    assert place_for_onnxruntime(reference, images, keep_float=[first], pad_channels=False).channels_padded == []
    placement = place_for_onnxruntime(int8, images, keep_float=[first])
    assert placement.kept_float == [first] and placement.channels_padded == [f"{first}: 12 -> 16"]
    np.testing.assert_array_equal(OnnxRuntimeRunner(int8).run(images), OnnxRuntimeRunner(reference).run(images))
    assert _conv_channels(int8, first)[0] == 16 and _conv_channels(int8, second) == (24, 16)
    assert _conv_channels(reference, first)[0] == 12
    assert conv_counts(int8) == {"quantized": 2, "float": 1}
    assert place_for_onnxruntime(int8, images, keep_float=[first]).channels_padded == []  # padded once


def _conv_channels(path: Path, name: str) -> tuple[int, int]:
    """(output, input) channels of the Conv `name`'s weight, float or INT8 behind a DequantizeLinear."""
    graph = onnx.load(str(path)).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    weight = next(n for n in graph.node if n.name == name).input[1]
    return shapes.get(weight) or shapes[producers[weight].input[0]][:2]


def test_channel_padding_ships_only_where_the_whole_file_gets_faster(tmp_path):
    """The padding is timed: padded against unpadded, side by side at the target's batch and at 64;
    the file keeps whichever the rule picks, and the record says which with the figures."""
    import re

    from edgekd.export.int8_fit import PADDING_TIE, _mix_if_faster

    int8, _, images = _int8_and_fp32("edgekd_cnn_fc", tmp_path, width=0.75)
    place_for_onnxruntime(int8, images)
    first = next(n.name for n in onnx.load(str(int8)).graph.node if n.op_type == "Conv")
    keep, facts = _mix_if_faster(int8, images, [first], load_target("host-cpu"))
    if not keep:  # the mixed file lost to all-INT8 (timed, so it may on any CPU): nothing float, nothing padded
        assert facts["channels_padded"] == [] and conv_counts(int8)["float"] == 0
        assert facts["mixed_precision"].startswith("not chosen")
        assert re.match(r"(kept|dropped): batch 1: padded", facts["channel_padding"])  # its timing is kept
        return
    figures = [tuple(map(float, pair)) for pair in
               re.findall(r"padded ([\d.]+) ms vs unpadded ([\d.]+) ms", facts["channel_padding"])]
    (padded_1, unpadded_1), (padded_64, unpadded_64) = figures  # batch 1 (host-cpu's), then batch 64
    pays = padded_64 < unpadded_64 and padded_1 <= PADDING_TIE * unpadded_1
    # the figures are printed to 0.1 us: at the rule's edge they cannot say which side it fell on
    edge = abs(padded_64 - unpadded_64) <= 1e-4 or abs(padded_1 - PADDING_TIE * unpadded_1) <= 1e-4
    if not edge:
        assert facts["channel_padding"].startswith("kept" if pays else "dropped")
    pays = facts["channel_padding"].startswith("kept")
    if pays:
        assert facts["channels_padded"] == [f"{first}: 12 -> 16"] and _conv_channels(int8, first)[0] == 16
    else:
        assert facts["channels_padded"] == [] and _conv_channels(int8, first)[0] == 12


def test_depthwise_convolutions_are_never_padded(tmp_path):
    """MobileNetV3 with every other convolution kept float: many changes of layout, some next to
    depthwise convolutions (whose channel count is their group count). Only group-1 pairs are padded,
    and ONNX Runtime runs the file."""
    from onnx import helper

    int8, fp32, images = _int8_and_fp32("edgekd_mobilenet_v3_small", tmp_path)
    place_for_onnxruntime(int8, images)
    convs = [n.name for n in onnx.load(str(int8)).graph.node if n.op_type == "Conv"]
    placement = place_for_onnxruntime(int8, images, keep_float=convs[::2])
    graph = onnx.load(str(int8)).graph
    groups = {n.name: next((helper.get_attribute_value(a) for a in n.attribute if a.name == "group"), 1)
              for n in graph.node if n.op_type == "Conv"}
    assert all(groups[entry.split(":")[0]] == 1 for entry in placement.channels_padded)
    logits = OnnxRuntimeRunner(int8).run(images)
    assert np.corrcoef(logits.ravel(), OnnxRuntimeRunner(fp32).run(images).ravel())[0, 1] > 0.9
