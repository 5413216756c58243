"""Latency on the target: measured where its runtime runs here, estimated where it cannot.

Measured: ONNX Runtime CPU targets whose CPU architecture is this host's; TensorRT targets on a
machine with TensorRT and an engine built for it. Everything else is a roofline estimate, and
the record says which (`source`), so a verdict never passes an estimate off as a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekd.config import Runtime, Target
from edgekd.measure.estimate import estimate_latency
from edgekd.measure.latency import Latency


def measurable_here(target: Target) -> tuple[bool, str]:
    """Whether this machine can measure `target`, and why not when it cannot."""
    if not target.is_this_host_architecture:
        return False, f"{target.name} runs on {target.machine}; this host cannot run its CPU"
    if target.runtime is Runtime.ONNXRUNTIME_CPU:
        return True, ""
    from edgekd.runtimes.tensorrt import tensorrt_available

    available, why = tensorrt_available()
    return (True, "") if available else (False, f"TensorRT is not available here ({why})")


@dataclass(frozen=True)
class TargetLatency:
    latency: Latency  # what the budget verdict uses: measured if possible, else the estimate
    estimate: Latency  # always computed, so measured and estimated can be compared
    note: str  # why it is an estimate, when it is one


def target_latency(onnx_path: Path, target: Target, batch: int | None = None, label: str = "latency",
                   engine: Path | None = None) -> TargetLatency:
    batch = batch or target.input.batch
    estimate, _ = estimate_latency(onnx_path, target, batch)
    can_measure, why = measurable_here(target)
    if can_measure and target.runtime is Runtime.ONNXRUNTIME_CPU:
        from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

        return TargetLatency(OnnxRuntimeRunner(onnx_path, target.threads).measure(batch, label=label), estimate, "")
    if can_measure and engine is not None:
        from edgekd.runtimes.tensorrt import TensorRTRunner

        return TargetLatency(TensorRTRunner(engine).measure(batch, label=label), estimate, "")
    if can_measure:
        why = "no TensorRT engine was built for this model"
    return TargetLatency(estimate, estimate, why)


def host_latency(onnx_path: Path, threads: int, batch: int, label: str = "host latency") -> Latency:
    """ONNX Runtime on this CPU: what the regression gate normalises, whatever the target."""
    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(onnx_path, threads).measure(batch, label=label)
