"""COCO mAP of a detector (PyTorch or an exported file) through pycocotools' COCOeval.

Boxes are scored in each image's own pixels (the annotations' sizes), not the network's working
size, so COCO's small / medium / large areas (under 32^2, under 96^2, above) mean what they mean
in COCO. Areas are the boxes' own, as there are no masks.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgekd.detection.data import DetectionSample, DetectionSet
from edgekd.detection.model import decode
from edgekd.detection.train import collate


@dataclass(frozen=True)
class DetectionMetrics:
    """COCO box AP in 0..1; a size's AP is None when the split has no box of that size."""

    map: float  # AP averaged over IoU 0.50:0.05:0.95
    map50: float
    map75: float
    map_small: float | None
    map_medium: float | None
    map_large: float | None
    images: int
    boxes: int  # ground-truth boxes scored

    def as_dict(self) -> dict:
        return asdict(self)


def _evaluated(samples: list[DetectionSample], detections: list[dict], num_classes: int, *,
               all_areas_only: bool = False):
    """pycocotools' COCOeval with `evaluate()` done (every image matched against its boxes), or None
    when there is nothing to match. Image ids are 1..N in the samples' order."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(samples) != len(detections):
        raise ValueError(f"{len(detections)} detection lists for {len(samples)} images")
    images, truths, found = [], [], []
    for image_id, (sample, result) in enumerate(zip(samples, detections), start=1):
        images.append({"id": image_id, "width": sample.width, "height": sample.height})
        for b in sample.boxes:
            w, h = b.x1 - b.x0, b.y1 - b.y0
            truths.append({"id": len(truths) + 1, "image_id": image_id, "category_id": b.label + 1,
                           "bbox": [b.x0, b.y0, w, h], "area": w * h, "iscrowd": 0})
        boxes = torch.as_tensor(result["boxes"]).reshape(-1, 4).double().tolist()
        for (x0, y0, x1, y1), score, label in zip(boxes, torch.as_tensor(result["scores"]).tolist(),
                                                  torch.as_tensor(result["labels"]).tolist()):
            found.append({"image_id": image_id, "category_id": int(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                          "score": float(score)})
    if not found or not truths:
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {"images": images, "annotations": truths,
                         "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(found), iouType="bbox")
        if all_areas_only:  # what the two headline numbers read: all sizes, up to 100 detections
            evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
            evaluation.params.maxDets = [100]
        evaluation.evaluate()
    return evaluation


def coco_map(samples: list[DetectionSample], detections: list[dict], num_classes: int) -> DetectionMetrics:
    """COCOeval of `detections` (per sample, in order: `boxes` xyxy in the sample's pixels, `scores`,
    `labels`) against the samples' boxes."""
    evaluation = _evaluated(samples, detections, num_classes)
    boxes = sum(len(s.boxes) for s in samples)
    if evaluation is None:
        return DetectionMetrics(0.0, 0.0, 0.0, None, None, None, len(samples), boxes)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.accumulate()
        evaluation.summarize()
    stats = [float(v) for v in evaluation.stats]  # -1 where a size has no ground truth

    def size(value: float) -> float | None:
        return None if value < 0 else value

    return DetectionMetrics(stats[0], stats[1], stats[2], size(stats[3]), size(stats[4]), size(stats[5]),
                            len(samples), boxes)


def _headline(evaluation, metric: str) -> float:
    """mAP@[.5:.95] or mAP@.5 from an accumulated COCOeval (all areas, 100 detections), as
    `summarize` computes them: the mean precision over the classes that have ground truth."""
    precision = evaluation.eval["precision"][..., 0, -1]  # [IoU, recall, class]
    if metric == "map50":
        precision = precision[0]
    present = precision[precision > -1]
    return float(present.mean()) if present.size else 0.0


def _resampled(evaluation, order: np.ndarray, metric: str) -> float:
    """The metric over the images `order` names (with repeats): COCOeval's own accumulation, run on its
    per-image matches laid out again for that list of images."""
    import copy

    per_image = evaluation.evalImgs
    n_images = len(evaluation._paramsEval.imgIds)
    blocks = len(per_image) // n_images  # classes x areas, each a run of n_images entries
    resampled = copy.copy(evaluation)
    resampled.evalImgs = [per_image[block * n_images + i] for block in range(blocks) for i in order]
    params = copy.copy(evaluation._paramsEval)
    params.imgIds = list(range(len(order)))
    resampled.params = resampled._paramsEval = params
    with contextlib.redirect_stdout(io.StringIO()):
        resampled.accumulate()
    return _headline(resampled, metric)


@dataclass(frozen=True)
class MapDrop:
    """How much of the teacher's mAP the student lost on the same images, in points (0..100)."""

    metric: str  # "map50" or "map"
    teacher: float  # points
    student: float
    drop: float  # teacher - student
    upper: float  # one-sided upper confidence bound of the drop (paired image bootstrap)
    confidence: float
    images: int
    resamples: int

    def as_dict(self) -> dict:
        return asdict(self)


def paired_map_drop(samples: list[DetectionSample], teacher: list[dict], student: list[dict], num_classes: int, *,
                    metric: str = "map50", confidence: float = 0.95, resamples: int = 400, seed: int = 0) -> MapDrop:
    """The student's mAP drop against the teacher and its upper confidence bound. mAP is not a mean
    over images, so the bound is a paired bootstrap: the same resampled list of images scores both
    detectors, and the drop's `confidence` quantile over the resamples is the bound. Each resample
    reuses COCOeval's per-image matching; only the accumulation is redone."""
    if metric not in ("map50", "map"):
        raise ValueError(f"metric {metric!r}: 'map50' or 'map'")
    evaluations = [_evaluated(samples, d, num_classes, all_areas_only=True) for d in (teacher, student)]
    scores = []
    full = np.arange(len(samples))
    rng = np.random.default_rng(seed)
    draws = [full] + [rng.integers(0, len(samples), len(samples)) for _ in range(resamples)]
    for evaluation in evaluations:
        scores.append(np.array([0.0 if evaluation is None else _resampled(evaluation, order, metric)
                                for order in draws]) * 100.0)
    drops = scores[0] - scores[1]
    return MapDrop(metric, float(scores[0][0]), float(scores[1][0]), float(drops[0]),
                   float(np.quantile(drops[1:], confidence)), confidence, len(samples), resamples)


@torch.no_grad()
def predict_detections(forward: Callable[[torch.Tensor], torch.Tensor | np.ndarray], dataset: DetectionSet,
                       batch_size: int = 32, **decode_options) -> list[dict[str, torch.Tensor]]:
    """Run `forward` (raw detector output for a batch of images) over a split, decode, and scale the
    boxes back from the working size to each image's own pixels."""
    results = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for images, _ in loader:
        raw = torch.as_tensor(forward(images))
        for result in decode(raw, len(dataset.classes), **decode_options):
            sample = dataset.samples[len(results)]
            scale = torch.tensor([sample.width, sample.height] * 2) / dataset.image_size
            results.append({**result, "boxes": result["boxes"] * scale})
    return results


def evaluate(model: torch.nn.Module, dataset: DetectionSet, batch_size: int = 32, **decode_options) -> DetectionMetrics:
    """mAP of a PyTorch detector over a split."""
    model.eval()
    detections = predict_detections(model, dataset, batch_size, **decode_options)
    return coco_map(dataset.samples, detections, len(dataset.classes))


def evaluate_runner(runner, dataset: DetectionSet, batch_size: int = 32, **decode_options) -> DetectionMetrics:
    """mAP of an exported detector: any runner whose `.run(images)` returns the raw output
    (`edgekd.runtimes.onnxruntime.OnnxRuntimeRunner`)."""
    detections = predict_detections(lambda x: runner.run(x.numpy()), dataset, batch_size, **decode_options)
    return coco_map(dataset.samples, detections, len(dataset.classes))
