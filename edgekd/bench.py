"""`edgekd bench`: one model's latency against one target's budget, outside a pipeline run.

An ONNX file is measured where this machine is the target's device (its `[device]` table) and the
target's runtime runs here, and estimated (roofline) where not; `--measure-here` times it here
anyway, labelled "measured on <this machine>, not on <target device>". A TensorRT engine is
measured, estimated from the .onnx beside it, or refused; so is an OpenVINO IR (.xml) on an
OpenVINO target. The budget verdict
is worded by `edgekd.verify.latency_budget.budget_verdict`, the same function the pipeline's report uses, so `edgekd bench` on
a run's student agrees with that run's report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekd.config import Target, load_target
from edgekd.errors import BadInputError, EnvironmentProblem
from edgekd.verify.latency_budget import budget_verdict
from edgekd.measure.latency import Latency


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


def bench_model(model: Path, target: str, batch: int | None, measure_here: bool = False,
                input_shape: tuple[int, int, int] | None = None) -> BenchResult:
    path = Path(model)
    if not path.is_file():
        raise BadInputError(f"model not found: {path}" if not path.exists() else f"{path} is not a file")
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".engine", ".xml"):
        raise BadInputError(f"{path}: expected an ONNX file (.onnx), a TensorRT engine (.engine) or an OpenVINO IR (.xml)")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: empty file")
    spec = load_target(target)
    batch = batch or spec.input.batch
    if suffix == ".engine":
        latency, estimate, note = _engine_latency(path, spec, batch, measure_here)
    elif suffix == ".xml":
        latency, estimate, note = _openvino_ir_latency(path, spec, batch, measure_here)
    else:
        import tempfile

        from edgekd.measure.target_latency import measurable_here, target_latency

        with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as folder:
            shape, timed = static_input(path, input_shape, Path(folder))
            if measurable_here(spec, measure_here)[0]:
                _fits_in_memory(path, batch, shape)
            measured = target_latency(timed, spec, batch, label=f"{path.name} latency", measure_here=measure_here)
        latency, estimate, note = measured.latency, measured.estimate, measured.note
    budget = budget_verdict(spec, latency.as_dict(), path.stat().st_size, note)
    return BenchResult(latency, estimate, budget["met"], _summary(path, spec, latency, estimate, note, budget),
                       model=str(path), target=spec.name, note=note, budget=budget)


def parse_input_shape(text: str | None) -> tuple[int, int, int] | None:
    """`--input-shape C,H,W` (e.g. 3,224,224)."""
    if text is None:
        return None
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or not all(1 <= d <= 16384 for d in dims):
        raise BadInputError(f"--input-shape {text!r}: expected C,H,W, three whole numbers from 1 to 16384 (e.g. 3,224,224)")
    return dims


def static_input(path: Path, input_shape: tuple[int, int, int] | None, folder: Path) -> tuple[tuple[int, int, int], Path]:
    """The model's image shape (C, H, W), and a file to time whose only dynamic dimension is the batch.

    An ONNX file whose height or width is dynamic is timed at `--input-shape` (written into a copy),
    never at a made-up size; without `--input-shape` it is refused. So is a file that is not an
    image classifier's graph: empty, not ONNX, or not exactly one float N x C x H x W input."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise BadInputError(f"{path}: not an ONNX model ({type(err).__name__})") from None
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if not model.graph.node or not inputs or not model.graph.output:
        raise BadInputError(f"{path}: not an ONNX model (no graph: {len(model.graph.node)} nodes, {len(inputs)} inputs)")
    if len(inputs) != 1:
        names = ", ".join(v.name for v in inputs)
        raise BadInputError(f"{path}: takes {len(inputs)} inputs ({names}); edgekd benches image classifiers with one input")
    value = inputs[0]
    tensor = value.type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type) if tensor.elem_type else "no tensor type"
        raise BadInputError(f"{path}: input '{value.name}' is {kind}; edgekd feeds float32 images")
    dims = tensor.shape.dim
    if len(dims) != 4:
        raise BadInputError(f"{path}: input '{value.name}' has {len(dims)} dimensions; edgekd feeds N x C x H x W images")
    fixed = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims[1:]]
    if input_shape is not None:
        clash = [f"{name} {f} in the file" for name, f, g in zip("CHW", fixed, input_shape) if f is not None and f != g]
        if clash:
            raise BadInputError(f"{path}: --input-shape {','.join(map(str, input_shape))} disagrees with the model "
                                f"({', '.join(clash)})")
        shape = input_shape
    elif None in fixed:
        free = "".join(name for name, f in zip("CHW", fixed) if f is None)
        raise BadInputError(f"{path}: input '{value.name}' has dynamic {'/'.join(free)}; "
                            f"give the size to time with --input-shape C,H,W")
    else:
        return tuple(fixed), path
    if None not in fixed:
        return shape, path
    for d, size in zip(dims[1:], shape):
        d.Clear()
        d.dim_value = size
    copy = folder / path.name
    onnx.save(model, str(copy))
    return tuple(shape), copy


def _fits_in_memory(path: Path, batch: int, shape: tuple[int, int, int]) -> None:
    """One line, not an allocation failure halfway through: the input batch alone must fit in a
    quarter of this machine's memory."""
    import os

    needed = batch * shape[0] * shape[1] * shape[2] * 4
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return
    if needed > total // 4:
        raise EnvironmentProblem(f"{path}: a batch of {batch} images of {'x'.join(map(str, shape))} needs "
                                 f"{needed / 2**30:.1f} GiB for the input alone; this machine has "
                                 f"{total / 2**30:.1f} GiB (use a smaller --batch)")


def _estimate_or_refuse(path: Path, target: Target, batch: int, measure_here: bool,
                        kind: str) -> tuple[Latency | None, tuple[Latency, Latency, str] | None]:
    """For a compiled file (engine, IR): the roofline of the .onnx beside it, if any; and, when this
    machine is not the target's device and no --measure-here was given, the estimate to report
    instead of a measurement (or a one-line refusal where there is nothing to estimate from)."""
    from edgekd.measure.target_latency import on_target_device

    source = path.with_suffix(".onnx")
    estimate = None
    if source.is_file():
        from edgekd.measure.estimate import estimate_latency

        estimate, _ = estimate_latency(source, target, batch)
    on_device, why = on_target_device(target)
    if on_device or measure_here:
        return estimate, None
    if estimate is not None:
        return estimate, (estimate, estimate, f"not the target's device: {why} (run there, or pass --measure-here)")
    raise BadInputError(f"{path}: this machine is not {target.device.label} ({why}); pass --measure-here "
                        f"to time the {kind} here anyway, labelled as such")


def _engine_latency(path: Path, target: Target, batch: int, measure_here: bool) -> tuple[Latency, Latency | None, str]:
    """Measured with TensorRT on the target's device (or anywhere with `measure_here`, labelled);
    estimated too when the ONNX file it was built from lies beside it."""
    from edgekd.measure.target_latency import off_target_label, on_target_device
    from edgekd.runtimes.tensorrt import tensorrt_available

    estimate, instead = _estimate_or_refuse(path, target, batch, measure_here, "engine")
    if instead is not None:
        return instead
    on_device = on_target_device(target)[0]
    available, why = tensorrt_available()
    if not available:
        raise EnvironmentProblem(f"{path}: cannot run a TensorRT engine here: {why}")
    from edgekd.runtimes.tensorrt import TensorRTRunner

    latency = TensorRTRunner(path).measure(batch)
    return latency, estimate, "" if on_device else off_target_label(target)


def _openvino_ir_latency(path: Path, target: Target, batch: int, measure_here: bool) -> tuple[Latency, Latency | None, str]:
    """An OpenVINO IR: measured with OpenVINO on the target's device (or anywhere with `measure_here`,
    labelled), estimated from the .onnx beside it elsewhere, or refused."""
    from edgekd.measure.target_latency import off_target_label, on_target_device
    from edgekd.runtimes import backend, timing_threads
    from edgekd.runtimes.openvino import OpenVinoRunner, openvino_available

    if not backend(target).reads_ir:
        raise BadInputError(f"{path}: an OpenVINO IR runs on OpenVINO targets only; {target.name} uses "
                            f"{target.runtime.value}")
    estimate, instead = _estimate_or_refuse(path, target, batch, measure_here, "IR")
    if instead is not None:
        return instead
    on_device = on_target_device(target)[0]
    available, why = openvino_available()
    if not available:
        raise EnvironmentProblem(f"{path}: cannot run an OpenVINO IR here: {why}")
    latency = OpenVinoRunner(path, timing_threads(target)).measure(batch)
    return latency, estimate, "" if on_device else off_target_label(target)


def _ms(value: float | None) -> str:
    return "not estimated" if value is None else f"{value:.3f} ms"


def _summary(path: Path, target: Target, latency: Latency, estimate: Latency | None, note: str, budget: dict) -> str:
    if latency.source == "measured":
        how = f"{note or f'measured on {target.device.label}'}: {latency.runtime}, {latency.runs} runs"
    else:
        how = f"estimated: {latency.runtime}" + (f"; not measured because {note}" if note else "")
    lines = [f"{path} on {target.name}, batch {latency.batch}: p50 {_ms(latency.p50)}, "
             f"p90 {_ms(latency.p90)}, p99 {_ms(latency.p99)} ({how})"]
    if latency.source == "measured" and estimate is not None:
        lines.append(f"roofline estimate beside it: p50 {estimate.p50:.3f} ms "
                     f"(measured / estimated = {latency.p50 / estimate.p50:.2f})")
    lines.append(budget["verdict"])
    return "\n".join(lines)
