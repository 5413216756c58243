"""Training a detector on labels: FCOS targets, focal + GIoU + centerness loss, through `edgekd.training.loop.fit`.

`fit` is the loop every classification stage uses (seeded, one-cycle SGD, checkpoints, DDP). It
moves `(images, targets)` batches as tensors, so a detection set's variable box lists are padded
to one `[M, 5]` tensor per image (`PaddedTargets`): x0, y0, x1, y1, label, with label -1 for
padding. Flipping happens there too, since `fit`'s own augmentations would move pixels but not boxes.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from edgekd.detection.data import DetectionSet
from edgekd.detection.model import STRIDE, cell_centres, distances_to_boxes, split_outputs
from edgekd.training.loop import TrainLog, TrainPlan, fit

CENTRE_RADIUS = 1.5  # strides around a box's centre whose cells may predict it (FCOS centre sampling)
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
GRAD_CLIP = 10.0  # total gradient norm: the first focal-loss steps on a fresh head can spike


class PaddedTargets(Dataset):
    """A `DetectionSet` whose targets are one `[max_boxes, 5]` tensor per image (label -1 = none),
    optionally mirrored left-right at random (torch's global generator, which `fit` seeds)."""

    def __init__(self, dataset: DetectionSet, max_boxes: int | None = None, flip: bool = False):
        self.dataset = dataset
        most = max((len(s.boxes) for s in dataset.samples), default=0)
        self.max_boxes = max(1, most if max_boxes is None else max_boxes)
        if most > self.max_boxes:
            raise ValueError(f"an image has {most} boxes; max_boxes is {self.max_boxes}")
        self.flip = flip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.dataset[index]
        boxes = target["boxes"]
        if self.flip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
            boxes = torch.stack([image.shape[-1] - boxes[:, 2], boxes[:, 1], image.shape[-1] - boxes[:, 0], boxes[:, 3]], 1)
        padded = torch.full((self.max_boxes, 5), -1.0)
        padded[:len(boxes), :4] = boxes
        padded[:len(boxes), 4] = target["labels"].float()
        return image, padded


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """A DataLoader `collate_fn` for a plain `DetectionSet`: stacked images, the targets as a list."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def assign_targets(targets: torch.Tensor, centres: torch.Tensor, stride: int = STRIDE,
                   radius: float = CENTRE_RADIUS) -> tuple[torch.Tensor, torch.Tensor]:
    """FCOS assignment on one level: a cell is positive for a box when its centre lies inside the
    box and within `radius` strides of the box's centre; of several boxes, the smallest wins.
    Returns the label per cell `[B, L]` (-1 background) and its box `[B, L, 4]` (xyxy)."""
    boxes, labels = targets[..., :4], targets[..., 4]  # [B, M, 4], [B, M]
    x, y = centres[None, :, None, 0], centres[None, :, None, 1]  # [1, L, 1]
    x0, y0, x1, y1 = (boxes[:, None, :, k] for k in range(4))  # [B, 1, M]
    cx, cy, reach = (x0 + x1) / 2, (y0 + y1) / 2, radius * stride
    inside = (x > x0) & (x < x1) & (y > y0) & (y < y1)
    near = ((x - cx).abs() < reach) & ((y - cy).abs() < reach)
    valid = (labels >= 0)[:, None, :]
    area = ((x1 - x0) * (y1 - y0)).expand(-1, centres.shape[0], -1)
    area = torch.where(inside & near & valid, area, torch.full_like(area, float("inf")))
    smallest, which = area.min(dim=2)  # [B, L]
    cell_labels = torch.where(torch.isfinite(smallest), labels.gather(1, which).long(), torch.full_like(which, -1))
    cell_boxes = boxes.gather(1, which[..., None].expand(-1, -1, 4))
    return cell_labels, cell_boxes


def centerness(boxes: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """FCOS centerness of each cell centre within its box (1 at the centre, 0 at an edge)."""
    left, top = centres[..., 0] - boxes[..., 0], centres[..., 1] - boxes[..., 1]
    right, bottom = boxes[..., 2] - centres[..., 0], boxes[..., 3] - centres[..., 1]
    lr = torch.stack([left, right], -1).clamp(min=1e-6)
    tb = torch.stack([top, bottom], -1).clamp(min=1e-6)
    return ((lr.min(-1).values / lr.max(-1).values) * (tb.min(-1).values / tb.max(-1).values)).sqrt()


def detection_loss(raw: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """The three FCOS terms on a batch: sigmoid focal loss over all cells and classes, GIoU on the
    positive cells weighted by their centerness, and centerness BCE on the positives. Each is
    divided by the number of positive cells (GIoU by their summed centerness)."""
    from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

    raw = raw.float()
    cls, box, ctr = split_outputs(raw, num_classes)
    b, _, h, w = raw.shape
    centres = cell_centres(h, w, STRIDE, raw.device)
    labels, boxes = assign_targets(targets, centres)
    positive = labels >= 0
    count = positive.sum().clamp(min=1).float()
    one_hot = F.one_hot(labels.clamp(min=0), num_classes).float() * positive[..., None]
    cls = cls.flatten(2).transpose(1, 2)
    focal = sigmoid_focal_loss(cls, one_hot, FOCAL_ALPHA, FOCAL_GAMMA, reduction="sum") / count
    predicted = distances_to_boxes(box.flatten(2).transpose(1, 2), centres)[positive]
    wanted = boxes[positive]
    target_ctr = centerness(wanted, centres.expand(b, -1, -1)[positive])
    if positive.any():
        giou = (generalized_box_iou_loss(predicted, wanted, reduction="none") * target_ctr).sum() / target_ctr.sum().clamp(min=1e-6)
        ctr_loss = F.binary_cross_entropy_with_logits(ctr.flatten(1)[positive], target_ctr, reduction="sum") / count
    else:
        giou = ctr_loss = raw.sum() * 0.0
    return {"focal": focal, "giou": giou, "centerness": ctr_loss}


class DetectionObjective(nn.Module):
    """Labels alone: `fit`'s objective for a detector (sum of the three `detection_loss` terms)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def trainable(self, model: nn.Module) -> nn.Module:
        return model

    def forward(self, output, x, y):
        return sum(detection_loss(output, y, self.num_classes).values())


def train_detector(model: nn.Module, objective: nn.Module, dataset: DetectionSet, plan: TrainPlan, *,
                   label: str, flip: bool = True, after_backward=None, **fit_options) -> TrainLog:
    """Train `model` in place on `dataset` (labels, or a teacher through `edgekd.detection.distill`);
    `fit_options` go to `edgekd.training.loop.fit` (checkpoint, fingerprint). `after_backward()` runs after
    each backward pass, before the gradients are clipped (QAT's `edgekd.training.fold.precondition_folded`)."""
    if plan.augment:
        raise ValueError(f"detection training flips in its data set (flip=True); plan.augment {plan.augment} "
                         "would move the pixels but not the boxes")
    padded = PaddedTargets(dataset, flip=flip)
    # the objective's own parameters (a distillation adapter) train too; a frozen teacher's have no grad
    parameters = [p for p in (*model.parameters(), *objective.parameters()) if p.requires_grad]

    def clip() -> None:
        if after_backward is not None:
            after_backward()
        torch.nn.utils.clip_grad_norm_(parameters, GRAD_CLIP)

    return fit(model, objective, padded, replace(plan, augment=()), label=label, after_backward=clip, **fit_options)
