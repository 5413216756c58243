"""COCO mAP through pycocotools, and the detection distillation losses."""

import copy

import pytest
import torch

from edgekd.detection.data import Box, DetectionSample
from edgekd.detection.distill import (
    DetectionDistillation,
    DetectionKDWeights,
    feature_imitation_loss,
    foreground,
    score_distillation_loss,
)
from edgekd.detection.evaluate import coco_map
from edgekd.detection.model import DetectorSpec, build_detector
from edgekd.detection.train import DetectionObjective, train_detector
from edgekd.training.loop import TrainPlan

SAMPLES = [
    DetectionSample("a.png", 200, 150, (Box(10, 10, 60, 50, 0), Box(100, 20, 190, 140, 1))),
    DetectionSample("b.png", 200, 150, (Box(30, 40, 50, 70, 2),)),
    DetectionSample("c.png", 200, 150, ()),
]


def _as_detections(samples, dx: float = 0.0, label_shift: int = 0):
    """Each sample's boxes as detections, moved right by `dx` of their width."""
    out = []
    for s in samples:
        boxes = torch.tensor([[b.x0 + dx * (b.x1 - b.x0), b.y0, b.x1 + dx * (b.x1 - b.x0), b.y1] for b in s.boxes])
        out.append({"boxes": boxes.reshape(-1, 4), "scores": torch.linspace(0.9, 0.5, len(s.boxes)),
                    "labels": torch.tensor([(b.label + label_shift) % 3 for b in s.boxes], dtype=torch.long)})
    return out


def test_ground_truth_as_predictions_scores_one():
    metrics = coco_map(SAMPLES, _as_detections(SAMPLES), num_classes=3)
    assert metrics.map == pytest.approx(1.0) and metrics.map50 == pytest.approx(1.0)
    assert metrics.map_small == pytest.approx(1.0)  # the 20 x 30 box
    assert metrics.map_large == pytest.approx(1.0)  # the 90 x 120 box
    assert metrics.boxes == 3 and metrics.images == 3


def test_shifted_boxes_score_lower_and_wrong_classes_zero():
    slightly = coco_map(SAMPLES, _as_detections(SAMPLES, dx=0.15), num_classes=3)  # IoU 0.74
    assert slightly.map50 == pytest.approx(1.0) and slightly.map < 0.7
    far = coco_map(SAMPLES, _as_detections(SAMPLES, dx=0.5), num_classes=3)  # IoU 0.33
    assert far.map50 == pytest.approx(0.0)
    assert coco_map(SAMPLES, _as_detections(SAMPLES, label_shift=1), num_classes=3).map == pytest.approx(0.0)
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}] * 3
    assert coco_map(SAMPLES, empty, num_classes=3).map == 0.0


def test_foreground_marks_the_cells_inside_boxes():
    targets = torch.tensor([[[0.0, 0.0, 16.0, 16.0, 0.0], [-1.0] * 5]])
    mask = foreground(targets, 4, 4).view(4, 4)
    assert mask[:2, :2].eq(1).all() and mask.sum() == 4


def test_feature_imitation_is_zero_when_equal_and_ignores_unweighted_cells():
    teacher = torch.randn(2, 8, 4, 4)
    weight = torch.zeros(2, 16)
    weight[:, :5] = 1.0
    assert float(feature_imitation_loss(teacher.clone(), teacher, weight)) == 0.0
    moved = teacher.clone()
    moved.view(2, 8, 16)[..., 10:] += 3.0  # only cells the weight ignores
    assert float(feature_imitation_loss(moved, teacher, weight)) == 0.0
    assert float(feature_imitation_loss(teacher + 0.5, teacher, weight)) == pytest.approx(0.25)


def test_score_distillation_is_zero_when_scores_agree_and_positive_otherwise():
    logits = torch.randn(2, 5, 6, 6)
    assert float(score_distillation_loss(logits, logits, 3.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(score_distillation_loss(logits, logits + 2.0, 3.0)) > 0.01


def test_distillation_trains_the_student_and_its_adapter_not_the_teacher():
    spec = DetectorSpec(3, width=16, tiny_widths=(8, 8, 16, 16, 32))
    torch.manual_seed(0)
    teacher = build_detector(DetectorSpec(3, width=24, tiny_widths=(8, 16, 16, 32, 32))).eval()
    frozen = copy.deepcopy(teacher.state_dict())
    student = build_detector(spec)
    objective = DetectionDistillation(teacher, spec.width, DetectionKDWeights(feature=1.0, score=1.0))
    adapter = objective.adapter.weight.detach().clone()
    images = torch.rand(8, 3, 64, 64)
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 40.0, 1.0]]]).expand(8, 1, 5).clone()
    terms = objective.terms(objective.trainable(student)(images), images, boxes)
    assert set(terms) == {"focal", "giou", "centerness", "feature", "score"}
    assert terms["feature"] > 0 and terms["score"] > 0

    class Fixed(torch.utils.data.Dataset):  # one image, one box: just the plumbing of train_detector
        classes = ["a", "b", "c"]
        samples = [DetectionSample("x.png", 64, 64, (Box(8, 8, 40, 40, 1),))] * 8

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return images[i], {"boxes": boxes[i, :, :4], "labels": torch.tensor([1])}

    plan = TrainPlan(epochs=3, lr=0.05, weight_decay=0.0, batch_size=4, seed=0)
    log = train_detector(student, objective, Fixed(), plan, label="kd", flip=False)
    assert log.epoch_losses[-1] < log.epoch_losses[0]
    assert not torch.equal(objective.adapter.weight, adapter)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in frozen.items())
    with pytest.raises(ValueError, match="flips in its data set"):
        train_detector(student, DetectionObjective(3), Fixed(), TrainPlan(1, 0.1, 0.0, 4, 0, augment=("hflip",)), label="x")
