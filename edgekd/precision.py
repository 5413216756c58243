"""Which file ships, INT8 or FP32, decided by measuring both on the target's runtime.

An INT8 file is not faster by nature: on a CPU, a convolution with one input channel, a tiny
classifier or a graph ONNX Runtime cannot fuse runs slower in INT8 than in FP32. So:

- `fit_int8_to_target` (called by the quantize stage on the exported QDQ graph) places the
  quantizers where the target's runtime can fuse them, then, where the target is measurable here,
  times every layer in both precisions (ONNX Runtime's profiler, same layers paired in order) and
  keeps in FP32 the layers INT8 runs slower: mixed precision by measurement (with the channel
  padding at their changes of layout kept only where it measures faster);
- `choose_precision` times the whole FP32 and INT8 files side by side (or estimates both, where
  the target is not measurable here) and returns the one that ships, with its reason.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekd.config import Precision, Target
from edgekd.measure.latency import Latency, percentiles, time_calls
from edgekd.runfolder import atomic_write_bytes
from edgekd.runtimes import backend

# interleaved timing for the decision: short rounds, pooled (see measure_side_by_side)
TIMING = {"warmup": 5, "min_runs": 30, "max_runs": 200, "max_seconds": 2.0}
ROUNDS = 3
LAYER_MARGIN = 1.10  # a layer stays float only when INT8 measures >10% slower: profiler noise is ~5%
LAYER_MIN_MS = 0.002  # ... and by more than 2 us: below that a tiny layer's "10%" is the profiler's noise
LAYER_OPS_OPTIMIZED = ("Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "ConvInteger",
                       "Gemm", "QGemm", "FusedGemm", "MatMul", "QLinearMatMul", "MatMulIntegerToFloat")
LAYER_OPS_SOURCE = ("Conv", "Gemm", "MatMul")


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


# ---------------------------------------------------------------- the whole model


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
        runners = {"fp32": runtime.runner(fp32, target.threads), "int8": runtime.runner(int8, target.threads)}
        latency = measure_runners_side_by_side(runners, batch, TIMING, ROUNDS)
        where = "" if on_target_device(target)[0] else f"; {off_target_label(target)}"
        return latency["int8"].p50, latency["fp32"].p50, "measured", latency["int8"].runtime + where
    from edgekd.measure.estimate import estimate_latency

    int8_ms = estimate_latency(int8, target, batch)[0].p50
    fp32_ms = estimate_latency(fp32, target, batch)[0].p50
    reason = why or "no engine to time here"
    return int8_ms, fp32_ms, "estimated", f"roofline for {target.name}; not measured: {reason}"


def measure_runners_side_by_side(runners: dict, batch: int, timing: dict, rounds: int) -> dict[str, Latency]:
    """Any runners (`example_input`, `run`, `description`), timed in rotated rounds, samples pooled:
    `edgekd.runtimes.onnxruntime.measure_side_by_side` for runners of different runtimes."""
    names = list(runners)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            runner = runners[name]
            images = runner.example_input(batch)
            samples[name] += time_calls(lambda: runner.run(images), label=f"{name} (batch {batch}, round {r + 1})",
                                        **timing)
    return {n: Latency(*percentiles(samples[n]), "measured", runners[n].description, batch, len(samples[n]))
            for n in names}


# ---------------------------------------------------------------- layer by layer


@dataclass(frozen=True)
class LayerTiming:
    name: str  # the layer's node name in the QDQ graph
    int8_ms: float
    fp32_ms: float

    def as_dict(self) -> dict:
        return asdict(self)


def layer_timings(fp32_path: Path, int8_path: Path, threads: int, batch: int, runs: int = 30) -> list[LayerTiming]:
    """Each Conv/Gemm/MatMul's time in both files, from ONNX Runtime's profiler on its optimised graphs.

    Layers are paired by their order in the optimised graphs (ONNX Runtime keeps the topological
    order, and both files hold the same layers); if the counts differ, nothing is paired: []."""
    import onnx

    from edgekd.runtimes.onnxruntime import open_session

    source_layers = [n.name for n in onnx.load(str(int8_path)).graph.node if n.op_type in LAYER_OPS_SOURCE]
    ordered: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for key, path in (("fp32", fp32_path), ("int8", int8_path)):
            optimized = Path(folder) / f"{key}.onnx"
            open_session(Path(path), threads, optimized_path=optimized)
            ordered[key] = [n.name for n in onnx.load(str(optimized)).graph.node if n.op_type in LAYER_OPS_OPTIMIZED]
    if not (len(source_layers) == len(ordered["fp32"]) == len(ordered["int8"])):
        return []
    times = {key: median_node_times(path, threads, batch, runs) for key, path in (("fp32", fp32_path), ("int8", int8_path))}
    return [LayerTiming(name, times["int8"].get(i8, 0.0), times["fp32"].get(f32, 0.0))
            for name, f32, i8 in zip(source_layers, ordered["fp32"], ordered["int8"])]


def median_node_times(path: Path, threads: int, batch: int, runs: int = 30) -> dict[str, float]:
    """Median milliseconds per node over `runs` profiled runs (after 5 warm-up runs): the median,
    because one descheduled run on a shared host would otherwise decide a layer's precision."""
    from edgekd.runtimes.onnxruntime import node_samples

    return {name: float(np.median(values)) for name, (_, values) in node_samples(path, threads, batch, runs).items()}


def slower_in_int8(timings: list[LayerTiming], margin: float = LAYER_MARGIN,
                   min_ms: float = LAYER_MIN_MS) -> list[str]:
    return [t.name for t in timings if t.int8_ms > margin * t.fp32_ms and t.int8_ms - t.fp32_ms > min_ms]


# ---------------------------------------------------------------- the quantize stage's hook


def fit_int8_to_target(int8_path: Path, fp32_path: Path | None, ctx, check=lambda: None) -> dict:
    """Make the exported QDQ graph fit the target's runtime (see the module docstring); returns the
    facts for the quantize stage's record. The graph at `int8_path` is rewritten in place;
    `fp32_path` is the FP32 file it was quantized from (for timing layers in both precisions).
    `check()` runs on the all-INT8 graph, once its quantizers are placed and before any layer is
    made float: that graph must compute what the fake-quantized model computes."""
    target = ctx.target
    if backend(target).places_int8_itself:
        check()
        return {"placement": "NNCF's (fits OpenVINO and TensorRT)"}
    from edgekd.export.ort_qdq import conv_counts, place_for_onnxruntime
    from edgekd.measure.target_latency import measurable_here

    calibration = _calibration_images(ctx)
    placement = place_for_onnxruntime(int8_path, calibration)
    check()
    details = {"placement": placement.as_dict(), "layers_kept_float": [], "layer_timings": []}
    can_measure, why = measurable_here(target)
    if can_measure and fp32_path is not None:
        timings = layer_timings(fp32_path, int8_path, target.threads, target.input.batch)
        keep = slower_in_int8(timings)
        details["layer_timings"] = [t.as_dict() for t in timings]
        if keep:
            all_int8 = Path(int8_path).read_bytes()
            keep, facts = _mix_if_faster(int8_path, calibration, keep, target)
            details.update(facts)
            if keep:  # the CI gate times this one: which layers stay float depends on the CPU
                kept = Path(int8_path).with_name(f"{Path(int8_path).stem}.all-int8.onnx")
                atomic_write_bytes(kept, all_int8)
                details["all_int8_onnx"] = ctx.run.relative(kept)
        details["layers_kept_float"] = keep
    else:
        details["mixed_precision"] = f"not chosen: layers cannot be timed here ({why or 'no FP32 file'})"
    details["onnxruntime_convs"] = conv_counts(int8_path, target.threads)
    return details


def _mix_if_faster(int8_path: Path, calibration: np.ndarray, keep: list[str],
                   target: Target) -> tuple[list[str], dict]:
    """Keep `keep` float only if the whole mixed file is faster than the all-INT8 one, timed side by
    side: each float layer adds a dequantize and a quantize around it, which the per-layer profile
    does not see (resnet18 at 224 px: two float layers made the file 1.9x slower). Returns the
    layers kept float and the facts for the record: how that was decided, and the channel padding
    at the float layers' changes of layout (ort_qdq rewrite 8), kept only where it pays."""
    from edgekd.export.ort_qdq import place_for_onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        all_int8, unpadded = Path(folder) / "all_int8.onnx", Path(folder) / "unpadded.onnx"
        all_int8.write_bytes(Path(int8_path).read_bytes())
        facts = {"channels_padded": place_for_onnxruntime(int8_path, calibration, keep_float=keep).channels_padded}
        if facts["channels_padded"]:
            unpadded.write_bytes(all_int8.read_bytes())
            place_for_onnxruntime(unpadded, calibration, keep_float=keep, pad_channels=False)
            pays, facts["channel_padding"] = _padding_pays(Path(int8_path), unpadded, target)
            if not pays:
                atomic_write_bytes(Path(int8_path), unpadded.read_bytes())
                facts["channels_padded"] = []
        runtime = backend(target)
        runners = {"mixed": runtime.runner(Path(int8_path), target.threads), "int8": runtime.runner(all_int8, target.threads)}
        latency = measure_runners_side_by_side(runners, target.input.batch, TIMING, ROUNDS)
        mixed_ms, int8_ms = latency["mixed"].p50, latency["int8"].p50
        figures = (f"{len(keep)} layer(s) float: {mixed_ms:.3f} ms vs all-INT8 {int8_ms:.3f} ms "
                   f"at batch {target.input.batch}, measured side by side")
        if mixed_ms < int8_ms:
            return keep, {**facts, "mixed_precision": f"chosen: {figures}"}
        atomic_write_bytes(Path(int8_path), all_int8.read_bytes())
    return [], {"channels_padded": [], "mixed_precision": f"not chosen (the whole file was not faster): {figures}"}


PADDING_BATCH = 64  # where a layout's cost shows: at batch 1 the Transpose it changes takes a few us
PADDING_TIE = LAYER_MARGIN  # at the target's batch, within 10% is a tie (as for a layer: timing noise)
PADDING_TIMING = {"warmup": 2, "min_runs": 10, "max_runs": 200, "max_seconds": 1.0}


def _padding_pays(padded: Path, unpadded: Path, target: Target) -> tuple[bool, str]:
    """Rewrite 8's padded file against the same file unpadded, side by side at the target's batch and
    at batch 64: kept where it is faster at batch 64 and no more than 10% slower at the target's batch.
    On edgekd_cnn_fc's float first convolution (`benchmarks/int8_speed.py --padding`, README):
    12 -> 16 channels up to 1.57x faster at batch 64 and even at batch 1; 8 -> 16 and 20 -> 32
    slower at both in one run of two."""
    runtime = backend(target)
    runners = {"padded": runtime.runner(padded, target.threads), "unpadded": runtime.runner(unpadded, target.threads)}
    latency = {batch: measure_runners_side_by_side(runners, batch, PADDING_TIMING, ROUNDS)
               for batch in sorted({target.input.batch, PADDING_BATCH})}
    at_target, at_large = latency[target.input.batch], latency[PADDING_BATCH]
    pays = (at_large["padded"].p50 < at_large["unpadded"].p50
            and at_target["padded"].p50 <= PADDING_TIE * at_target["unpadded"].p50)
    figures = "; ".join(f"batch {b}: padded {t['padded'].p50:.4f} ms vs unpadded {t['unpadded'].p50:.4f} ms"
                        for b, t in latency.items())
    return pays, f"{'kept' if pays else 'dropped'}: {figures}, measured side by side"


def _calibration_images(ctx, samples: int = 256) -> np.ndarray:
    """Training images, every class in proportion: ranges for the quantizers the placement adds."""
    from edgekd.data import stratified_subset

    subset = stratified_subset(ctx.data.train, min(samples, ctx.profile.quantize.calibration_samples), ctx.profile.seed)
    return np.stack([subset[i][0].numpy() for i in range(len(subset))]).astype(np.float32)


# ---------------------------------------------------------------- the pipeline's hook


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
