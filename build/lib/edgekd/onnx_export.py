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
    """How closely ONNX Runtime's logits follow PyTorch's on the same images."""

    max_abs_diff: float
    top1_agreement: float
    samples: int
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol

    def as_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement,
                "samples": self.samples, "atol": self.atol}


@torch.no_grad()
def check_parity(model: nn.Module, onnx_path: Path, images: torch.Tensor, atol: float) -> Parity:
    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

    expected = model.eval().cpu()(images).float().numpy()
    actual = OnnxRuntimeRunner(onnx_path, threads=1).run(images.numpy())
    return Parity(
        max_abs_diff=float(np.abs(actual - expected).max()),
        top1_agreement=float((actual.argmax(1) == expected.argmax(1)).mean()),
        samples=len(images),
        atol=atol,
    )
