"""ONNX Runtime on the CPU: run, time, and profile per layer."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekd.errors import BadInputError
from edgekd.measure.latency import Latency, time_side_by_side
from edgekd.runtimes.base import Runner

if TYPE_CHECKING:
    from edgekd.measure.device import Machine


# x86 flags with an INT8 dot product that accumulates in 32 bits: without one, ONNX Runtime's
# u8 x s8 convolution (vpmaddubsw) adds pairs of products in 16 bits and saturates
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_weight_bits(machine: Machine | None = None) -> int:
    """How many bits of a signed INT8 weight ONNX Runtime's fused INT8 convolution computes exactly
    on this CPU: 8, or 7 on an x86 CPU without VNNI (AVX2 only, or AVX-512 without VNNI).

    There, two u8 x s8 products are summed into an int16 that saturates past 32,767 (255 x 127 x 2
    = 64,770); ONNX Runtime's own quantizer calls the cure `reduce_range`: weights within +-63.
    Measured on a 2-core AMD EPYC with AVX2 only: a 64-channel 3x3 QDQ convolution is 4
    quantization steps off its unfused computation with 8-bit weights, exact with 7-bit ones."""
    from edgekd.measure.device import this_machine

    machine = machine or this_machine()
    if machine.arch.lower() not in ("x86_64", "amd64", "i686", "x86"):
        return 8  # Arm's INT8 dot products (sdot, i8mm) accumulate in 32 bits
    return 8 if _VNNI_FLAGS & machine.cpu_flags else 7


def session_options(threads: int, optimized_path: Path | None = None, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def open_session(path: Path, threads: int, **kwargs):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), session_options(threads, **kwargs), providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own Fail / InvalidGraph / NoSuchFile types
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise BadInputError(f"{path}: ONNX Runtime cannot load it ({first})") from None


def store_int8_weights(path: Path) -> Path:
    """Rewrite a QDQ graph in place so each weight is stored as INT8, not as FP32 + QuantizeLinear.

    NNCF's native strip exports FP32 weights followed by QuantizeLinear/DequantizeLinear, which
    makes the "INT8" file larger than the FP32 one. ONNX Runtime's basic-level offline optimisation
    (constant folding, standard ONNX ops only) folds each weight's QuantizeLinear into an INT8
    initializer, which is the form TensorRT's explicit quantization reads too."""
    from edgekd.runfolder import atomic_output

    with atomic_output(path) as tmp:
        import onnxruntime as ort

        options = session_options(1, optimized_path=tmp)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return path


class OnnxRuntimeRunner(Runner):
    """One ONNX Runtime CPU session with the target's thread count."""

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        self.path = Path(path)
        self.threads = threads
        self.session = open_session(self.path, threads)
        meta = self.session.get_inputs()[0]
        self.input_name = meta.name
        self.input_shape = meta.shape
        self.description = f"onnxruntime-cpu {ort.__version__} ({threads} thread{'s' if threads > 1 else ''})"

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]

    def example_input(self, batch: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        dims = shape or tuple(d if isinstance(d, int) else 1 for d in self.input_shape[1:])
        return np.random.default_rng(0).standard_normal((batch, *dims)).astype(np.float32)



def measure_side_by_side(paths: dict[str, Path], threads: int, batches: tuple[int, ...], timing: dict,
                         rounds: int) -> dict[str, dict[int, Latency]]:
    """ONNX files timed in ONNX Runtime side by side (`edgekd.measure.latency.time_side_by_side`)."""
    return time_side_by_side({name: OnnxRuntimeRunner(path, threads) for name, path in paths.items()}, batches,
                             timing, rounds)


def node_samples(path: Path, threads: int, batch: int, runs: int = 30, warmup: int = 5) -> dict[str, tuple[str, list[float]]]:
    """Per node of ONNX Runtime's optimised graph, from its own profiler: (op, milliseconds of each
    of `runs` runs), after `warmup` runs that are left out. Random inputs of the file's own shape."""
    with tempfile.TemporaryDirectory() as folder:
        session = open_session(Path(path), threads, profile_prefix=str(Path(folder) / "ort"))
        meta = session.get_inputs()[0]
        dims = tuple(d if isinstance(d, int) else 1 for d in meta.shape[1:])
        images = np.random.default_rng(0).standard_normal((batch, *dims)).astype(np.float32)
        for _ in range(warmup + runs):
            session.run(None, {meta.name: images})
        trace = json.loads(Path(session.end_profiling()).read_text())
    samples: dict[str, tuple[str, list[float]]] = {}
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            name = event["name"][: -len("_kernel_time")]
            samples.setdefault(name, (event.get("args", {}).get("op_name", "?"), []))[1].append(event["dur"] / 1000.0)
    return {name: (op, values[warmup:] if len(values) > warmup else values) for name, (op, values) in samples.items()}


def profile_layers(path: Path, threads: int, batch: int, runs: int = 30) -> list[dict]:
    """Mean time per node from ONNX Runtime's own profiler: [{name, op, ms}], slowest first."""
    rows = [{"name": name, "op": op, "ms": float(np.mean(values))}
            for name, (op, values) in node_samples(path, threads, batch, runs).items()]
    return sorted(rows, key=lambda r: r["ms"], reverse=True)
