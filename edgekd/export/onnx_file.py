"""PyTorch -> ONNX with a dynamic batch dimension, and the check that ONNX Runtime agrees.

The check is run, not assumed: the exported file is loaded in ONNX Runtime and its logits are
compared with PyTorch's on real images, within a tolerance the profile states.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.runfolder import atomic_output

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> Path:
    """Write `model` to `path` (atomically); batch is dynamic, everything else fixed."""
    model = model.eval().cpu()
    with atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example[:1].cpu(),),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


@dataclass(frozen=True)
class Parity:
    """How closely ONNX Runtime's logits follow PyTorch's on the same images.

    `atol` is the tolerance applied: the profile's absolute one, or a share of the logits' range
    where that is larger (`[export] rtol` for FP32, whose float32 rounding scales with the logits;
    `int8_rtol` for INT8). An INT8 file rounds each activation in its own kernels, and
    one-step rounding differences add up over a deep network: a Lite0 with 16 depthwise layers
    drifts by 1-4% of its logits' range from its fake-quantized model (docs/transfer.md), whatever
    their scale, while an exporter's mistake moves them by a quarter of it. `decided` counts the
    images whose top-1 leads the runner-up by more than the tolerance: the others are near ties
    that rounding within it may flip, so top-1 agreement is judged on the decided ones."""

    max_abs_diff: float
    top1_agreement: float  # on every image
    samples: int
    atol: float
    logit_range: float = 0.0
    decided: int = 0
    decided_agreement: float = 1.0

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol

    def as_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement,
                "samples": self.samples, "atol": self.atol, "logit_range": self.logit_range,
                "decided": self.decided, "decided_agreement": self.decided_agreement}


@torch.no_grad()
def check_parity(model: nn.Module, onnx_path: Path, images: torch.Tensor, atol: float, rtol: float = 0.0) -> Parity:
    """ONNX Runtime's logits against `model`'s on `images`, within max(atol, rtol x their range)."""
    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

    expected = model.eval().cpu()(images).float().numpy()
    actual = OnnxRuntimeRunner(onnx_path, threads=1).run(images.numpy())
    spread = float(expected.max() - expected.min()) if expected.size else 0.0
    tolerance = max(atol, rtol * spread)
    agrees = actual.argmax(1) == expected.argmax(1)
    ranked = np.sort(expected, axis=1)
    decided = (ranked[:, -1] - ranked[:, -2] > tolerance) if expected.shape[1] > 1 else np.ones(len(agrees), bool)
    return Parity(
        max_abs_diff=float(np.abs(actual - expected).max()),
        top1_agreement=float(agrees.mean()),
        samples=len(images),
        atol=tolerance,
        logit_range=spread,
        decided=int(decided.sum()),
        decided_agreement=float(agrees[decided].mean()) if decided.any() else 1.0,
    )
