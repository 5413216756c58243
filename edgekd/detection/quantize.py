"""INT8 for the detector through edgekd's own path: NNCF fake quantization, QDQ export, ONNX Runtime placement.

The chain is the classifier's (`edgekd.stages.quantize`, `edgekd.export.ort_qdq`); this module only
adapts a `DetectionSet` to it and strings the steps together:

1. `quantize_detector`: `quantize_with_nncf` folds the BatchNorms and calibrates NNCF's fake
   quantizers on training images (its dataset items' [0] must be the image, and the stratified
   draw needs an integer label: `CalibrationImages` gives `(image, 0)`);
2. optionally QAT on the fake-quantized model (`qat_detector`: `train_detector` with the folded
   BatchNorm preconditioning that the classifier QAT uses);
3. `export_int8`: `strip_to_qdq`, `export_onnx`, `store_int8_weights` (INT8 initializers), then
   `place_for_onnxruntime`, which gives each of the three output convolutions (class logits, box
   distances, centerness) its own output QuantizeLinear with its own calibrated range, so that ONNX
   Runtime fuses them into QLinearConv; the concat that joins them runs in float after their
   DequantizeLinears. The three maps therefore never share one quantization scale in the file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from edgekd.config import ActivationScheme
from edgekd.detection.data import DetectionSet
from edgekd.detection.train import DetectionObjective, train_detector
from edgekd.training.loop import TrainLog, TrainPlan


class CalibrationImages(Dataset):
    """A `DetectionSet`'s images as `(image, 0)`: what `quantize_with_nncf` reads (item [0] the
    image, an integer label for its stratified draw; the boxes are not needed)."""

    def __init__(self, dataset: DetectionSet):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset[index][0], 0


def calibration_array(dataset: DetectionSet, samples: int, seed: int = 0) -> np.ndarray:
    """`samples` images drawn at random (seeded) as one float32 array, for `place_for_onnxruntime`."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:samples].tolist()
    return torch.stack([dataset[i][0] for i in order]).numpy()


def quantize_detector(model: nn.Module, train: DetectionSet, samples: int,
                      scheme: ActivationScheme = ActivationScheme.ASYMMETRIC, seed: int = 0) -> nn.Module:
    """The fake-quantized detector (BatchNorms folded, NNCF INT8 quantizers calibrated on `samples`
    training images); `model` is left as it is."""
    from edgekd.stages.quantize import quantize_with_nncf

    return quantize_with_nncf(model.eval(), CalibrationImages(train), samples, scheme, seed=seed)


def qat_detector(quantized: nn.Module, parent: nn.Module, train: DetectionSet, plan: TrainPlan, *,
                 label: str = "QAT") -> TrainLog:
    """QAT in place on the fake-quantized detector, on labels: the folded weights' gradients are
    preconditioned by the folded BatchNorm scales of `parent` (the unfolded FP32 model), as in the
    classifier QAT, then clipped as in `train_detector`."""
    from edgekd.training.fold import fold_scales, precondition_folded

    hook = precondition_folded(quantized, fold_scales(parent))
    return train_detector(quantized, DetectionObjective(len(train.classes)), train, replace(plan, weight_decay=0.0),
                          label=label, after_backward=hook)


def export_fp32(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    from edgekd.export.onnx_file import export_onnx

    return export_onnx(model.eval(), example, Path(path))


def export_int8(quantized: nn.Module, example: torch.Tensor, path: Path, calibration: np.ndarray) -> dict:
    """Write the INT8 ONNX file at `path` (QDQ, INT8 weights, placed for ONNX Runtime's fused
    kernels). Returns the placement record and `conv_counts` of the graph ONNX Runtime runs."""
    from edgekd.export.ort_qdq import conv_counts, place_for_onnxruntime
    from edgekd.export.onnx_file import export_onnx
    from edgekd.runtimes.onnxruntime import store_int8_weights
    from edgekd.stages.quantize import strip_to_qdq

    path = Path(path)
    export_onnx(strip_to_qdq(quantized, example), example, path)
    store_int8_weights(path)
    placement = place_for_onnxruntime(path, calibration)
    return {"placement": placement.as_dict(), "conv_counts": conv_counts(path)}
