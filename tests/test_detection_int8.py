"""INT8 detector: NNCF fake quantization -> QDQ ONNX -> ONNX Runtime placement, on a small trained student."""

import numpy as np
import pytest
import torch

from edgekd.config import ActivationScheme
from edgekd.detection.evaluate import evaluate, evaluate_runner
from edgekd.detection.model import DetectorSpec, build_detector
from edgekd.detection.quantize import calibration_array, export_int8, quantize_detector
from edgekd.detection.train import DetectionObjective, train_detector
from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner
from edgekd.training.loop import TrainPlan

SIZE = 96  # the detection_splits fixture's (tests/conftest.py)
SPEC = DetectorSpec(5, width=24, head_convs=1, tiny_widths=(8, 12, 24, 48, 64))


@pytest.fixture(scope="module")
def splits(detection_splits):
    return detection_splits


@pytest.fixture(scope="module")
def exported(splits, tmp_path_factory):
    torch.manual_seed(0)
    model = build_detector(SPEC)
    train_detector(model, DetectionObjective(5), splits["train"],
                   TrainPlan(epochs=12, lr=0.05, weight_decay=5e-4, batch_size=8, seed=0), label="student")
    quantized = quantize_detector(model.eval(), splits["train"], 28, ActivationScheme.ASYMMETRIC)
    path = tmp_path_factory.mktemp("det8onnx") / "int8.onnx"
    example = splits["val"][0][0][None]
    record = export_int8(quantized, example, path, calibration_array(splits["train"], 28))
    return model, quantized, path, record


def test_every_convolution_runs_fused_in_int8(exported):
    model, _, path, record = exported
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert record["conv_counts"] == {"quantized": convs, "float": 0}
    # the three output convolutions get their own output quantizers (one scale each), not one shared
    assert sorted(record["placement"]["outputs_quantized"]) == ["/box_out/Conv", "/cls_out/Conv", "/ctr_out/Conv"]
    import onnx

    graph = onnx.load(str(path)).graph
    assert {i.data_type for i in graph.initializer if i.name.endswith("weight_quantized")} <= {onnx.TensorProto.INT8}
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)


def test_int8_file_runs_and_scores_like_the_fake_quantized_model(exported, splits):
    model, quantized, path, _ = exported
    runner = OnnxRuntimeRunner(path)
    images = torch.stack([splits["val"][i][0] for i in range(4)])
    raw = runner.run(images.numpy())
    assert raw.shape == (4, 5 + 5, SIZE // 8, SIZE // 8) and np.isfinite(raw).all()
    with torch.no_grad():
        fake = quantized.eval()(images).numpy()
    # the file also quantizes the output convolutions' outputs (QLinearConv needs it; NNCF leaves
    # them float) and rounds where NNCF's reference arithmetic does not: a few output steps apart
    step = (fake.max() - fake.min()) / 255
    assert np.abs(raw - fake).max() < 4 * step and np.abs(raw - fake).mean() < step
    # scored on the 28 training images: the 6 val images (17 boxes) move mAP50 by points per box
    int8 = evaluate_runner(runner, splits["train"])
    reference = evaluate(quantized, splits["train"])
    assert reference.map50 > 0.03  # trained: a layout or decode error would score ~0 here
    assert abs(int8.map50 - reference.map50) < 0.01 and abs(int8.map - reference.map) < 0.005


def test_nncf_names_lead_to_every_weight(exported):
    """edgekd's weight-quantizer lookup finds every convolution's weight of the detector."""
    from edgekd.stages.quantize import _weight_quantizers

    model, quantized, _, _ = exported
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert len(_weight_quantizers(quantized, torch.rand(1, 3, 96, 96))) == convs
