"""The INT8 file fitted to the target's runtime: quantizers placed where the runtime fuses them,
then, where the target is measurable here, every layer timed in both precisions (ONNX Runtime's
profiler, same layers paired in order) and the layers INT8 runs slower kept in FP32: mixed
precision by measurement (with the channel padding at their changes of layout kept only where it
measures faster). Called by the quantize stage on the exported QDQ graph; the whole-file choice
between INT8 and FP32 comes after, in `edgekd.verify.ship`.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekd.config import Target
from edgekd.measure.latency import DECISION_ROUNDS, measure_runners_side_by_side
from edgekd.runfolder import atomic_write_bytes
from edgekd.runtimes import backend, timing_threads

LAYER_MARGIN = 1.10  # a layer stays float only when INT8 measures >10% slower: profiler noise is ~5%
LAYER_MIN_MS = 0.002  # ... and by more than 2 us: below that a tiny layer's "10%" is the profiler's noise
LAYER_OPS_OPTIMIZED = ("Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "ConvInteger",
                       "Gemm", "QGemm", "FusedGemm", "MatMul", "QLinearMatMul", "MatMulIntegerToFloat")
LAYER_OPS_SOURCE = ("Conv", "Gemm", "MatMul")


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


# ---------------------------------------------------------------- the export step's two calls


def place_for_target(int8_path: Path, ctx) -> dict:
    """Quantizers where the target's runtime fuses them, in place; returns the facts for the
    quantize stage's record. The all-INT8 graph this leaves must compute what the fake-quantized
    model computes (the caller checks it, before `keep_slow_layers_float` changes anything)."""
    if backend(ctx.target).places_int8_itself:
        return {"placement": "NNCF's (fits OpenVINO and TensorRT)"}
    from edgekd.export.ort_qdq import place_for_onnxruntime

    return {"placement": place_for_onnxruntime(int8_path, _calibration_images(ctx)).as_dict()}


def keep_slow_layers_float(int8_path: Path, fp32_path: Path | None, ctx) -> dict:
    """Where the target is measurable here, time every layer of the placed graph at `int8_path`
    against the FP32 file it was quantized from, and keep float the layers INT8 runs slower, if the
    whole file is then faster (see the module docstring); returns the facts for the record."""
    target = ctx.target
    if backend(target).places_int8_itself:
        return {}
    from edgekd.export.ort_qdq import conv_counts
    from edgekd.measure.target_latency import measurable_here

    details = {"layers_kept_float": [], "layer_timings": []}
    can_measure, why = measurable_here(target)
    if can_measure and fp32_path is not None:
        timings = layer_timings(fp32_path, int8_path, timing_threads(target), target.input.batch)
        keep = slower_in_int8(timings)
        details["layer_timings"] = [t.as_dict() for t in timings]
        if keep:
            all_int8 = Path(int8_path).read_bytes()
            keep, facts = _mix_if_faster(int8_path, _calibration_images(ctx), keep, target)
            details.update(facts)
            if keep:  # the CI gate times this one: which layers stay float depends on the CPU
                kept = Path(int8_path).with_name(f"{Path(int8_path).stem}.all-int8.onnx")
                atomic_write_bytes(kept, all_int8)
                details["all_int8_onnx"] = ctx.run.relative(kept)
        details["layers_kept_float"] = keep
    else:
        details["mixed_precision"] = f"not chosen: layers cannot be timed here ({why or 'no FP32 file'})"
    details["onnxruntime_convs"] = conv_counts(int8_path, timing_threads(target))
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
        runners = {"mixed": runtime.runner(Path(int8_path), timing_threads(target)), "int8": runtime.runner(all_int8, timing_threads(target))}
        latency = measure_runners_side_by_side(runners, target.input.batch)
        mixed_ms, int8_ms = latency["mixed"].p50, latency["int8"].p50
        figures = (f"{len(keep)} layer(s) float: {mixed_ms:.3f} ms vs all-INT8 {int8_ms:.3f} ms "
                   f"at batch {target.input.batch}, measured side by side")
        if mixed_ms < int8_ms:
            return keep, {**facts, "mixed_precision": f"chosen: {figures}"}
        atomic_write_bytes(Path(int8_path), all_int8.read_bytes())
    # the padding's own timing stays in the record: it was measured, though nothing ships it
    dropped = {"channel_padding": facts["channel_padding"]} if "channel_padding" in facts else {}
    return [], {"channels_padded": [], **dropped, "mixed_precision": f"not chosen (the whole file was not faster): {figures}"}


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
    runners = {"padded": runtime.runner(padded, timing_threads(target)), "unpadded": runtime.runner(unpadded, timing_threads(target))}
    latency = {batch: measure_runners_side_by_side(runners, batch, PADDING_TIMING, DECISION_ROUNDS)
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
