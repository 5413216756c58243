"""`edgekd bench`: one model's latency against one target's budget, outside a pipeline run.

An ONNX file is measured where the target's runtime runs on this machine and estimated (roofline)
where it does not; a TensorRT engine is measured or refused, never estimated. The budget verdict
is worded by `budget_verdict`, the same function the pipeline's report uses, so `edgekd bench` on
a run's student agrees with that run's report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekd.config import Target, load_target
from edgekd.errors import BadInputError, EnvironmentProblem
from edgekd.latency import Latency


@dataclass(frozen=True)
class BenchResult:
    latency: Latency  # what the verdict uses: measured where possible, else the estimate
    estimate: Latency | None  # the roofline; None only for an engine with no .onnx beside it
    met: bool
    summary: str  # what `edgekd bench` prints: latency, how it was obtained, the verdict
    model: str = ""  # the file measured
    target: str = ""  # the target's name
    note: str = ""  # why the latency is an estimate, when it is one
    budget: dict | None = None  # budget_verdict(...): limits, checks, verdict

    def as_dict(self) -> dict:
        """`edgekd bench --json` (keys in the README)."""
        return {"model": self.model, "target": self.target, "batch": self.latency.batch, "met": self.met,
                "latency_ms": self.latency.as_dict(),
                "latency_estimate_ms": self.estimate.as_dict() if self.estimate is not None else None,
                "latency_note": self.note, "budget": self.budget}


def budget_verdict(target: Target, latency: dict, size_bytes: int) -> dict:
    """The budget record of report.json: which limits hold for this latency record
    (`Latency.as_dict()`) and file size, and one sentence saying so and on what basis."""
    limits = {"p50": target.budget_p50_ms, "p99": target.budget.latency_p99_ms}
    checks = {k: latency[k] <= v for k, v in limits.items() if v is not None}
    size_mb = size_bytes / 1e6
    if target.budget.memory_mb is not None:
        checks["memory"] = size_mb <= target.budget.memory_mb
    met = all(checks.values())
    basis = "measured" if latency["source"] == "measured" else "estimated (roofline; confirm on the device with `edgekd bench`)"
    stated = ", ".join(f"{k} {latency[k]:.3f} ms vs {v:.3f} ms" for k, v in limits.items() if v is not None)
    return {
        "latency_ms": {k: v for k, v in limits.items()},
        "memory_mb": target.budget.memory_mb,
        "fps": target.budget.fps,
        "met": met,
        "checks": checks,
        "source": latency["source"],
        "verdict": f"{'MET' if met else 'MISSED'} on {target.name}: {stated}; {basis}",
    }


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
        from edgekd.verify import target_latency

        measured = target_latency(path, spec, batch, label=f"{path.name} latency")
        latency, estimate, note = measured.latency, measured.estimate, measured.note
    budget = budget_verdict(spec, latency.as_dict(), path.stat().st_size)
    return BenchResult(latency, estimate, budget["met"], _summary(path, spec, latency, estimate, note, budget),
                       model=str(path), target=spec.name, note=note, budget=budget)


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
        from edgekd.estimate import estimate_latency

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
