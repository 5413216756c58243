"""A planted regression for the CI gate's tests and benchmark: the smoke student's layers
(edgekd_cnn) made wider until they need at least `factor` times the MACs of a finished run's
final student, INT8-quantized the same way. (Pruning the run's distilled student less cannot hit
1.5x: its channels go in steps of 4, which gives 1.29x or 1.90x.)"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Subset

from edgekd.config import ActivationScheme, load_profile
from edgekd.data import load_data
from edgekd.metrics import count
from edgekd.models import create_model
from edgekd.onnx_export import export_onnx
from edgekd.pipeline import read_report
from edgekd.runtimes.onnxruntime import store_int8_weights
from edgekd.stages.quantize import quantize_with_nncf, strip_to_qdq


def plant_student(run_dir: Path, factor: float, out: Path) -> tuple[Path, int, int]:
    """(INT8 ONNX path, its MACs, the run's final student's MACs). The run: a host-cpu run of
    the smoke profile (an edgekd_cnn student on Fashion-MNIST)."""
    report = read_report(Path(run_dir) / "report.json")
    final_macs = report["stages"][-1]["macs"]
    data = load_data(None, load_profile("smoke").data, 32, 0)
    example = torch.stack([data.test[i][0] for i in range(8)])
    width = 0.05
    while True:
        torch.manual_seed(0)
        model = create_model("edgekd_cnn", data.num_classes, data.input_shape, width).eval()
        macs = count(model, example)[0]
        if macs >= factor * final_macs:
            break
        width = round(width + 0.01, 2)
    scheme = ActivationScheme(report["target"]["activations"])
    quantized = quantize_with_nncf(model, Subset(data.train, range(256)), 256, scheme)
    return store_int8_weights(export_onnx(strip_to_qdq(quantized, example), example, Path(out))), macs, final_macs
