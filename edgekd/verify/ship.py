"""Which file ships, INT8 or FP32, decided by measuring both on the target's runtime.

An INT8 file is not faster by nature: on a CPU, a convolution with one input channel, a tiny
classifier or a graph ONNX Runtime cannot fuse runs slower in INT8 than in FP32. So
`choose_precision` times the whole FP32 and INT8 files side by side (or estimates both, where the
target is not measurable here) and returns the one that ships, with its reason. (Which layers of
the INT8 file stay float is decided before, by `edgekd.export.int8_fit`.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from edgekd.config import Precision, Target
from edgekd.measure.latency import measure_runners_side_by_side
from edgekd.runtimes import backend, timing_threads


@dataclass(frozen=True)
class Shipped:
    file: str  # relative to the run folder
    precision: str  # "int8" (possibly mixed: some layers float) or "fp32"
    reason: str
    int8_ms: float  # p50 at the target's batch
    fp32_ms: float
    source: str  # "measured" or "estimated"

    @property
    def slower_than_alternative(self) -> bool:
        shipped, other = (self.int8_ms, self.fp32_ms) if self.precision == "int8" else (self.fp32_ms, self.int8_ms)
        return shipped > other

    def as_dict(self) -> dict:
        return asdict(self)


def choose_precision(fp32_path: Path, int8_path: Path, target: Target, batch: int | None = None,
                     root: Path | None = None, measure_here: bool = False) -> Shipped:
    """INT8 ships where it is at least as fast as FP32 on `target` (measured where the target runs
    here, else the roofline estimate); FP32 ships otherwise. A target that asks for FP32 gets FP32;
    TensorRT targets ship INT8 (their engine is built from it), with the comparison stated."""
    batch = batch or target.input.batch
    int8_ms, fp32_ms, source, how = _compare(Path(fp32_path), Path(int8_path), target, batch, measure_here)

    def name(path: Path) -> str:
        return str(Path(path).relative_to(root)) if root is not None else Path(path).name

    ratio = fp32_ms / int8_ms if int8_ms > 0 else float("inf")
    figures = f"INT8 {int8_ms:.3f} ms vs FP32 {fp32_ms:.3f} ms at batch {batch}, {source} ({how})"
    if target.precision is Precision.FP32:
        return Shipped(name(fp32_path), "fp32", f"the target asks for FP32; {figures}", int8_ms, fp32_ms, source)
    if backend(target).engine_from_int8:
        return Shipped(name(int8_path), "int8", f"{target.runtime.value} builds its engine from the INT8 graph; {figures}",
                       int8_ms, fp32_ms, source)
    if int8_ms <= fp32_ms:
        return Shipped(name(int8_path), "int8", f"INT8 is {ratio:.2f}x FP32's speed: {figures}", int8_ms, fp32_ms,
                       source)
    return Shipped(name(fp32_path), "fp32", f"INT8 is slower ({ratio:.2f}x FP32's speed): {figures}", int8_ms,
                   fp32_ms, source)


def shipped_warning(shipped: Shipped) -> str | None:
    """One sentence for the verdict when the shipped file is slower than the file it replaces."""
    if not shipped.slower_than_alternative:
        return None
    other = "FP32" if shipped.precision == "int8" else "INT8"
    return (f"WARNING: ships {shipped.file} ({shipped.precision.upper()}), slower than {other} on this target "
            f"({shipped.reason})")


def _compare(fp32: Path, int8: Path, target: Target, batch: int, measure_here: bool) -> tuple[float, float, str, str]:
    """Both files timed side by side where this machine can time the target (its device, or anywhere
    with `measure_here`, labelled), else both estimated."""
    from edgekd.measure.target_latency import measurable_here, off_target_label, on_target_device

    can_measure, why = measurable_here(target, measure_here)
    runtime = backend(target)
    if can_measure and not runtime.needs_engine:
        runners = {"fp32": runtime.runner(fp32, timing_threads(target)), "int8": runtime.runner(int8, timing_threads(target))}
        latency = measure_runners_side_by_side(runners, batch)
        where = "" if on_target_device(target)[0] else f"; {off_target_label(target)}"
        return latency["int8"].p50, latency["fp32"].p50, "measured", latency["int8"].runtime + where
    from edgekd.measure.estimate import estimate_latency

    int8_ms = estimate_latency(int8, target, batch)[0].p50
    fp32_ms = estimate_latency(fp32, target, batch)[0].p50
    reason = why or "no engine to time here"
    return int8_ms, fp32_ms, "estimated", f"roofline for {target.name}; not measured: {reason}"


def ship(root: Path, target: Target, fp32_record: dict, int8_record: dict,
         measure_here: bool = False) -> tuple[dict, dict, dict]:
    """For `pipeline._finish`: (report's `shipped`, the stage record the budget is judged on, files
    written). The OpenVINO IR of the shipped file is written beside it for OpenVINO targets."""
    fp32_path, int8_path = root / "student.fp32.onnx", root / int8_record["onnx"]
    shipped = choose_precision(fp32_path, int8_path, target, root=root, measure_here=measure_here)
    record = int8_record if shipped.precision == "int8" else fp32_record
    # the runtime's own files: of the INT8 file, and of the FP32 one when that ships
    onnx_files = {"int8": int8_path, **({"fp32": fp32_path} if shipped.precision == "fp32" else {})}
    files = backend(target).write_deployables(root, onnx_files)
    return {**shipped.as_dict(), "warning": shipped_warning(shipped)}, record, files
