"""`edgekd bench`: one model's latency against one target's budget, outside a pipeline run.

An ONNX file is measured where the target's runtime runs on this machine and estimated (roofline)
where it does not; a TensorRT engine is measured or refused, never estimated. The budget verdict
is worded by `edgekd.measure.budget.budget_verdict`, the same function the pipeline's report uses, so `edgekd bench` on
a run's student agrees with that run's report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekd.config import Target, load_target
from edgekd.errors import BadInputError, EnvironmentProblem
from edgekd.measure.budget import budget_verdict
from edgekd.measure.latency import Latency


@dataclass(frozen=True)
class BenchResult:
    latency: Latency  # what the verdict uses: measured where possible, else the estimate
    estimate: Latency | None  # the roofline; None only for an engine with no .onnx beside it
    met: bool
    summary: str  # what `edgekd bench` prints: latency, how it was obtained, the verdict


def bench_model(model: Path, target: str, batch: int | None) -> BenchResult:
    path = Path(model)
    if not path.is_file():
        raise BadInputError(f"model not found: {path}" if not path.exists() else f"{path} is not a file")
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".engine"):
        raise BadInputError(f"{path}: expected an ONNX file (.onnx) or a TensorRT engine (.engine)")
    spec = load_target(target)
    batch = batch or spec.input.batch
    if suffix == ".engine":
        latency, estimate, note = _engine_latency(path, spec, batch)
    else:
        from edgekd.measure.target_latency import target_latency

        measured = target_latency(path, spec, batch, label=f"{path.name} latency")
        latency, estimate, note = measured.latency, measured.estimate, measured.note
    budget = budget_verdict(spec, latency.as_dict(), path.stat().st_size)
    return BenchResult(latency, estimate, budget["met"], _summary(path, spec, latency, estimate, note, budget))


def _engine_latency(path: Path, target: Target, batch: int) -> tuple[Latency, Latency | None, str]:
    """Measured with TensorRT; estimated too when the ONNX file it was built from lies beside it."""
    from edgekd.runtimes.tensorrt import tensorrt_available

    available, why = tensorrt_available()
    if not available:
        raise EnvironmentProblem(f"{path}: cannot run a TensorRT engine here: {why}")
    from edgekd.runtimes.tensorrt import TensorRTRunner

    latency = TensorRTRunner(path).measure(batch)
    source = path.with_suffix(".onnx")
    estimate = None
    if source.is_file():
        from edgekd.measure.estimate import estimate_latency

        estimate, _ = estimate_latency(source, target, batch)
    return latency, estimate, ""


def _summary(path: Path, target: Target, latency: Latency, estimate: Latency | None, note: str, budget: dict) -> str:
    how = (f"measured: {latency.runtime}, {latency.runs} runs" if latency.source == "measured"
           else f"estimated: {latency.runtime}" + (f"; not measured because {note}" if note else ""))
    lines = [f"{path} on {target.name}, batch {latency.batch}: p50 {latency.p50:.3f} ms, "
             f"p90 {latency.p90:.3f} ms, p99 {latency.p99:.3f} ms ({how})"]
    if latency.source == "measured" and estimate is not None:
        lines.append(f"roofline estimate beside it: p50 {estimate.p50:.3f} ms "
                     f"(measured / estimated = {latency.p50 / estimate.p50:.2f})")
    lines.append(budget["verdict"])
    return "\n".join(lines)
