"""Latency on the target: measured where this machine *is* the target's device, estimated elsewhere.

Measured: the target's `[device]` matches this machine (edgekd.measure.device) and its runtime
runs here (ONNX Runtime or OpenVINO on the CPU; TensorRT with an engine built for it). Everything else is a
roofline estimate, with the reason in `note`. `measure_here=True` (`--measure-here`) times the
model on this machine anyway, and says so: "measured on <this machine>, not on <target device>".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekd.config import Target
from edgekd.measure.device import matches, this_machine
from edgekd.measure.estimate import estimate_latency
from edgekd.measure.latency import Latency
from edgekd.runtimes import backend, timing_threads


def off_target_label(target: Target) -> str:
    """What a latency timed here under `--measure-here` is: never the target device's latency
    (and with fewer threads than the target's, where this machine has fewer CPUs)."""
    threads = timing_threads(target)
    fewer = f", with {threads} threads (the target's {target.threads} exceed this machine's CPUs)" if threads < target.threads else ""
    return f"measured on {this_machine().label}, not on {target.device.label}{fewer}"


def on_target_device(target: Target) -> tuple[bool, str]:
    """Whether this machine is `target`'s device, and why not when it is not."""
    return matches(target.device, this_machine())


def measurable_here(target: Target, measure_here: bool = False) -> tuple[bool, str]:
    """Whether this machine can time `target`'s runtime (on its device, or anywhere with
    `measure_here`), and why not when it cannot."""
    on_device, why = on_target_device(target)
    if not on_device and not measure_here:
        return False, f"not the target's device: {why} (run there, or pass --measure-here)"
    return backend(target).available()


@dataclass(frozen=True)
class TargetLatency:
    latency: Latency  # what the budget verdict uses: measured if possible, else the estimate
    estimate: Latency  # always computed, so measured and estimated can be compared
    note: str  # why it is an estimate; or, under measure_here off the device, where it was measured
    on_target: bool  # measured on the target's own device

    def as_record(self) -> dict:
        """The latency keys of a stage in report.json."""
        return {"latency_ms": self.latency.as_dict(), "latency_estimate_ms": self.estimate.as_dict(),
                "latency_note": self.note, "latency_on_target": self.on_target}


def target_latency(onnx_path: Path, target: Target, batch: int | None = None, label: str = "latency",
                   engine: Path | None = None, measure_here: bool = False) -> TargetLatency:
    batch = batch or target.input.batch
    estimate, _ = estimate_latency(onnx_path, target, batch)
    can_measure, why = measurable_here(target, measure_here)
    on_device = on_target_device(target)[0]
    note = "" if on_device else off_target_label(target)
    runtime = backend(target)
    model = engine if runtime.needs_engine else onnx_path
    if can_measure and model is not None:
        measured = runtime.runner(model, timing_threads(target)).measure(batch, label=label)
        return TargetLatency(measured, estimate, note, on_device)
    if can_measure:
        why = "no TensorRT engine was built for this model"
    return TargetLatency(estimate, estimate, why, False)

