"""How far the roofline estimate is from ONNX Runtime on this host.

For each model: the host-cpu target's roofline estimate (edgekd.estimate) beside ONNX Runtime's
measured p50 at batch 1 with the target's thread count, and the ratio measured / estimated.
A ratio near 1 means the estimate that stands in for unreachable targets is calibrated; how far
it strays, and for which kinds of model (tiny graphs dominated by per-layer overhead, INT8 QDQ
graphs), says how much to trust an "estimated" verdict.

    python benchmarks/estimator.py                 # all models; minutes: run it on a quiet machine
    python benchmarks/estimator.py --quick         # the two small edgekd_cnn models only (or EDGEKD_BENCH_QUICK=1)
    python benchmarks/estimator.py --models resnet18,resnet18-int8 --out /tmp/est.json

Weights are random (seed 0): latency does not depend on their values. Models are exported FP32 in
eval mode, so the exporter folds BatchNorm into the convolutions; the INT8 model is ONNX Runtime's
static QDQ quantization of the FP32 resnet18 (per-channel weights, random calibration images).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekd.benchmarking import write_results
from edgekd.config import load_target
from edgekd.measure.estimate import estimate_latency
from edgekd.models import create_model
from edgekd.export.onnx_file import export_onnx
from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

OUT = Path(__file__).resolve().parent / "out" / "estimator.json"
QUICK = ("edgekd_cnn", "edgekd_cnn-0.5")
SMALL = (1, 28, 28)  # what edgekd's own models are built for (Fashion-MNIST)
IMAGENET = (3, 224, 224)


@dataclass(frozen=True)
class Spec:
    name: str
    input_shape: tuple[int, int, int]
    build: object  # () -> nn.Module
    int8_from: str | None = None  # quantize this FP32 model's ONNX file instead of building one


def _torchvision(name: str):
    def build():
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=1000)

    return build


SPECS = {
    spec.name: spec
    for spec in (
        Spec("edgekd_cnn", SMALL, lambda: create_model("edgekd_cnn", 10, SMALL, 1.0)),
        Spec("edgekd_cnn-0.5", SMALL, lambda: create_model("edgekd_cnn", 10, SMALL, 0.5)),
        Spec("edgekd_resnet", SMALL, lambda: create_model("edgekd_resnet", 10, SMALL, 1.0)),
        Spec("resnet18", IMAGENET, _torchvision("resnet18")),
        Spec("mobilenet_v3_small", IMAGENET, _torchvision("mobilenet_v3_small")),
        Spec("mobilenet_v3_large", IMAGENET, _torchvision("mobilenet_v3_large")),
        Spec("resnet18-int8", IMAGENET, None, int8_from="resnet18"),
    )
}


class RandomImages:
    """ONNX Runtime calibration reader: `count` random images (seeded), one batch each."""

    def __init__(self, input_name: str, shape: tuple[int, ...], count: int = 16):
        rng = np.random.default_rng(0)
        self.batches = iter([{input_name: rng.standard_normal((1, *shape)).astype(np.float32)} for _ in range(count)])

    def get_next(self):
        return next(self.batches, None)


def _fp32(spec: Spec, folder: Path) -> Path:
    path = folder / f"{spec.name}.onnx"
    if not path.is_file():
        torch.manual_seed(0)
        export_onnx(spec.build().eval(), torch.zeros(1, *spec.input_shape), path)
    return path


def _int8(spec: Spec, folder: Path) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = _fp32(SPECS[spec.int8_from], folder)
    prepared = folder / f"{spec.name}.prepared.onnx"  # shapes inferred, constants folded: what ORT asks for
    quant_pre_process(str(source), str(prepared))
    path = folder / f"{spec.name}.onnx"
    quantize_static(
        str(prepared), str(path), RandomImages("input", spec.input_shape),
        quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,  # host-cpu: asymmetric activations
        calibrate_method=CalibrationMethod.MinMax,
    )
    return path


def run(names: list[str], out: Path) -> list[dict]:
    target = load_target("host-cpu")
    rows, runtime = [], None
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name in names:
            spec = SPECS[name]
            path = _int8(spec, folder) if spec.int8_from else _fp32(spec, folder)
            estimate, layers = estimate_latency(path, target, 1)
            measured = OnnxRuntimeRunner(path, target.threads).measure(1, label=f"{name} latency")
            runtime = measured.runtime
            rows.append({
                "model": name,
                "input_shape": list(spec.input_shape),
                "precision": "int8 (QDQ)" if spec.int8_from else "fp32",
                "macs": sum(layer.macs for layer in layers),
                "layers": len(layers),
                "estimated_ms": estimate.p50,
                "measured_ms": measured.p50,
                "measured_p99_ms": measured.p99,
                "runs": measured.runs,
                "ratio": measured.p50 / estimate.p50,
            })
            _print_row(rows[-1])
    payload = {
        "target": target.name,
        "threads": target.threads,
        "batch": 1,
        "runtime": runtime,  # the timing runner's (host() records the versions)
        "rows": rows,
    }
    write_results(out.name, payload, out=out.parent)
    return rows


HEADER = f"{'model':<22}{'input':>12}{'precision':>12}{'MACs':>10}{'est. ms':>10}{'meas. ms':>10}{'meas/est':>10}"


def _print_row(row: dict) -> None:
    shape = "x".join(map(str, row["input_shape"]))
    print(f"{row['model']:<22}{shape:>12}{row['precision']:>12}{row['macs'] / 1e6:>9.1f}M"
          f"{row['estimated_ms']:>10.3f}{row['measured_ms']:>10.3f}{row['ratio']:>10.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("EDGEKD_BENCH_QUICK") == "1",
                        help=f"only {', '.join(QUICK)} (a check that the script works, in seconds)")
    parser.add_argument("--models", help=f"comma-separated subset of: {', '.join(SPECS)}")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON output [default: {OUT}]")
    args = parser.parse_args(argv)
    names = list(QUICK) if args.quick else list(SPECS)
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n not in SPECS]
        if unknown:
            parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(SPECS)}")
    print(HEADER, flush=True)
    run(names, args.out)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
