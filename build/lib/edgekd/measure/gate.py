"""The number the CI regression gate compares: the student's host latency relative to a reference
that scales like it, so the machine cancels and a slower student does not.

Chosen by measurement (benchmarks/gate.py; README "CI latency gate"):
- the reference is the student's own kind of model: edgekd_cnn at width 0.25 (the smoke student
  is edgekd_cnn 0.5 with half its channels pruned: the same layers at about the same size),
  seed 0, INT8 QDQ in the target's activation scheme, calibrated on seeded noise. An INT8 student
  against an FP32 reference moves with each CPU's INT8-to-FP32 speed ratio (VNNI or not, 256- or
  512-bit pipes); against an INT8 reference of the same layers it does not;
- at batch GATE_BATCH: per-call overhead amortised over 16 images, while one call (~0.1 ms on an
  idle core, under 1 ms on a loaded one) still fits in a scheduler time slice; at batch 64 a call
  on a loaded 2-core runner is preempted mid-way and the ratio's spread doubles (measured);
- student and reference timed in alternating rounds (`measure_side_by_side`), so load on a
  shared CI runner lands on both, with GATE_THREADS threads whatever the target says.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgekd.config import ActivationScheme

GATE_BATCH = 16
GATE_THREADS = 1
GATE_ROUNDS = 5
GATE_TIMING = {"warmup": 5, "min_runs": 20, "max_runs": 60, "max_seconds": 2.0}
REFERENCE_ARCH, REFERENCE_WIDTH = "edgekd_cnn", 0.25
CALIBRATION_IMAGES = 256


def reference_description(scheme: ActivationScheme) -> str:
    return f"{REFERENCE_ARCH} x{REFERENCE_WIDTH:g} (seed 0, untrained), INT8 QDQ {scheme.value}"


def build_reference(path: Path, num_classes: int, input_shape: tuple[int, int, int], scheme: ActivationScheme,
                    opset: int) -> tuple[Path, int]:
    """The gate's reference ONNX file at `path`, and its MACs per image."""
    from torch.utils.data import TensorDataset

    from edgekd.metrics import count
    from edgekd.models import create_model
    from edgekd.onnx_export import export_onnx
    from edgekd.runtimes.onnxruntime import store_int8_weights
    from edgekd.stages.quantize import quantize_with_nncf, strip_to_qdq

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create_model(REFERENCE_ARCH, num_classes, input_shape, REFERENCE_WIDTH).eval()
    images = torch.randn((CALIBRATION_IMAGES, *input_shape), generator=generator)
    calibration = TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    macs = count(model, images[:1])[0]
    quantized = quantize_with_nncf(model, calibration, CALIBRATION_IMAGES, scheme)
    store_int8_weights(export_onnx(strip_to_qdq(quantized, images[:8]), images[:8], Path(path), opset))
    return Path(path), macs


def gate_latency(student_onnx: Path, reference_onnx: Path, *, threads: int = GATE_THREADS, batch: int = GATE_BATCH,
                 rounds: int = GATE_ROUNDS, timing: dict | None = None) -> dict:
    """Student and reference p50 at `batch`, interleaved; normalised = student / reference."""
    from edgekd.runtimes.onnxruntime import measure_side_by_side

    timed = measure_side_by_side({"student": Path(student_onnx), "reference": Path(reference_onnx)}, threads,
                                 (batch,), timing or GATE_TIMING, rounds)
    student, reference = timed["student"][batch], timed["reference"][batch]
    return {"student_ms": student.as_dict(), "reference_ms": reference.as_dict(),
            "normalised_latency": student.p50 / reference.p50, "batch": batch, "threads": threads}
