"""Detection distillation: imitate the teacher's neck where objects are, and its class scores.

Two terms on top of the labels' FCOS loss (`edgekd.detection.train.detection_loss`), whose box
targets stay the labels':

- **feature imitation**: the student's stride-8 neck map, through a learned 1x1 adapter to the
  teacher's width, regresses the teacher's, cell by cell, weighted by where objects are: 1 inside
  a ground-truth box, else the teacher's own best score there (so its confident false positives
  and hard background count, plain background hardly);
- **score distillation**: the student's class logits against the teacher's probabilities as soft
  targets, by binary cross-entropy scaled by |p_student - p_teacher|^2 (the quality focal loss of
  GFL), which keeps the many easy background cells from drowning the rest and is exactly zero
  where the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.detection.model import STRIDE, Detector, cell_centres, split_outputs
from edgekd.detection.train import assign_targets, detection_loss

SCORE_GAMMA = 2.0


@dataclass(frozen=True)
class DetectionKDWeights:
    """How much each distillation term adds to the labels' loss."""

    feature: float = 1.0
    score: float = 1.0


def foreground(targets: torch.Tensor, height: int, width: int, stride: int = STRIDE) -> torch.Tensor:
    """`[B, H * W]`: 1.0 where a cell's centre lies inside a ground-truth box (padded targets)."""
    centres = cell_centres(height, width, stride, targets.device)
    x, y = centres[None, :, None, 0], centres[None, :, None, 1]
    b = targets[:, None]
    inside = (x > b[..., 0]) & (x < b[..., 2]) & (y > b[..., 1]) & (y < b[..., 3]) & (b[..., 4] >= 0)
    return inside.any(dim=2).float()


def feature_imitation_loss(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean over cells of the channel-mean squared error between the adapted student map
    and the teacher's (`[B, C, H, W]` each, `weight` `[B, H * W]`)."""
    if student.shape != teacher.shape:
        raise ValueError(f"adapted student features {tuple(student.shape)} differ from the teacher's {tuple(teacher.shape)}")
    error = (student.float() - teacher.float()).square().mean(dim=1).flatten(1)
    return (error * weight).sum() / weight.sum().clamp(min=1e-6)


def score_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                            normalizer: torch.Tensor | float) -> torch.Tensor:
    """Quality-focal BCE of the student's class logits against the teacher's sigmoid probabilities,
    summed over cells and classes and divided by `normalizer` (the positive-cell count)."""
    target = teacher_logits.float().sigmoid()
    bce = F.binary_cross_entropy_with_logits(student_logits.float(), target, reduction="none")
    scale = (student_logits.float().sigmoid() - target).abs().pow(SCORE_GAMMA)
    return (bce * scale).sum() / normalizer


class _StudentWithAdapter(nn.Module):
    """What `fit` trains while distilling: the student, whose output it returns with its adapted neck map."""

    def __init__(self, student: Detector, adapter: nn.Conv2d):
        super().__init__()
        self.student = student
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.student.features(x)
        return self.student.head(feature), self.adapter(feature)


class DetectionDistillation(nn.Module):
    """`fit`'s objective for a student detector taught by a frozen teacher detector."""

    def __init__(self, teacher: Detector, student_width: int, weights: DetectionKDWeights = DetectionKDWeights()):
        super().__init__()
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.num_classes = teacher.spec.num_classes
        self.weights = weights
        self.adapter = nn.Conv2d(student_width, teacher.spec.width, 1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: BatchNorm statistics stay the teacher's
        return self

    def trainable(self, student: Detector) -> nn.Module:
        if student.spec.num_classes != self.num_classes:
            raise ValueError(f"the student has {student.spec.num_classes} classes, the teacher {self.num_classes}")
        return _StudentWithAdapter(student, self.adapter)

    def terms(self, output, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each loss term of one batch, unweighted (the labels' three and the two distillation ones)."""
        raw, adapted = output
        with torch.no_grad():
            teacher_feature = self.teacher.features(x)
            teacher_raw = self.teacher.head(teacher_feature)
        terms = detection_loss(raw, y, self.num_classes)
        b, _, h, w = raw.shape
        t_cls, _, t_ctr = split_outputs(teacher_raw.float(), self.num_classes)
        teacher_score = (t_cls.sigmoid() * t_ctr.sigmoid()).sqrt().amax(dim=1).flatten(1)  # [B, H * W]
        weight = torch.maximum(foreground(y, h, w), teacher_score)
        terms["feature"] = feature_imitation_loss(adapted, teacher_feature, weight)
        labels, _ = assign_targets(y, cell_centres(h, w, STRIDE, raw.device))
        positives = (labels >= 0).sum().clamp(min=1).float()
        s_cls, _, _ = split_outputs(raw, self.num_classes)
        terms["score"] = score_distillation_loss(s_cls, t_cls, positives)
        return terms

    def forward(self, output, x, y):
        terms = self.terms(output, x, y)
        kd = self.weights.feature * terms.pop("feature") + self.weights.score * terms.pop("score")
        return sum(terms.values()) + kd
