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
- student and reference timed call by call in alternation (`time_alternating`), and the ratio
  taken per step then its median, so load on a shared CI runner lands on both and a preempted
  call is an outlier the median drops; with GATE_THREADS threads whatever the target says.
  Rounds of up to 60 calls per model, pooled, moved the ratio by up to 9% beside one busy core,
  and a CI run saw +78%; call-by-call steps moved it under 2% (benchmarks/gate_stability.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgekd.config import ActivationScheme

GATE_BATCH = 16
GATE_THREADS = 1
GATE_STEPS = 400  # ~0.3 s of calls at batch 16 on an idle core
GATE_WARMUP = 10
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
    from edgekd.export.onnx_file import export_onnx
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
                 steps: int = GATE_STEPS) -> dict:
    """Student and reference at `batch`, one call of each per step (`time_alternating`);
    normalised = the median over steps of student time / reference time."""
    import numpy as np

    from edgekd.measure.latency import Latency, percentiles, time_alternating
    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

    runners = {"student": OnnxRuntimeRunner(Path(student_onnx), threads),
               "reference": OnnxRuntimeRunner(Path(reference_onnx), threads)}
    images = {name: runner.example_input(batch) for name, runner in runners.items()}
    samples = time_alternating({name: (lambda r=runner, x=images[name]: r.run(x)) for name, runner in runners.items()},
                               label=f"gate (batch {batch}, {threads} thread{'s' * (threads > 1)})",
                               warmup=GATE_WARMUP, steps=steps)
    timed = {name: Latency(*percentiles(samples[name]), "measured", runners[name].description, batch, steps)
             for name in runners}
    ratio = float(np.median(np.asarray(samples["student"]) / np.asarray(samples["reference"])))
    return {"student_ms": timed["student"].as_dict(), "reference_ms": timed["reference"].as_dict(),
            "normalised_latency": ratio, "batch": batch, "threads": threads}
