"""OpenVINO on the CPU: the only module that imports `openvino` (the optional extra
`edgekd[openvino]`), and only inside functions, so edgekd imports and runs where it is absent.

OpenVINO reads the same ONNX files as ONNX Runtime (a QDQ graph runs in INT8: its CPU plugin turns
QuantizeLinear/DequantizeLinear into FakeQuantize and fuses them into the layers) or its own IR
(`.xml` + `.bin`). Its "FP32" runs in bf16 on CPUs with AVX512-BF16 or AMX unless told otherwise:
the runner's description states the precision the plugin actually used.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from edgekd.errors import BadInputError, EnvironmentProblem
from edgekd.runtimes.base import Runner


def openvino_available() -> tuple[bool, str]:
    """(True, "") where OpenVINO's CPU plugin can run here, else (False, why not)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return False, f"edgekd's OpenVINO targets are x86 CPUs; this host is {platform.machine()}"
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False, "the openvino package is not installed; pip install 'edgekd[openvino]'"
    return True, ""


def _core():
    available, why = openvino_available()
    if not available:
        raise EnvironmentProblem(f"cannot run OpenVINO here: {why}")
    import openvino as ov

    return ov.Core()


class OpenVinoRunner(Runner):
    """One OpenVINO CPU model (ONNX or IR .xml) with the target's thread count; compiled once per batch size."""

    def __init__(self, path: Path, threads: int = 1):
        self.path = Path(path)
        if not self.path.is_file():
            raise BadInputError(f"model not found: {self.path}")
        self.threads = threads
        self.core = _core()
        try:
            self.model = self.core.read_model(str(self.path))
        except Exception as err:  # OpenVINO raises its own RuntimeError subtypes
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise BadInputError(f"{self.path}: OpenVINO cannot read it ({first})") from None
        self.input_shape = [d.get_length() if d.is_static else None for d in self.model.inputs[0].get_partial_shape()]
        self.compiled: dict[int, object] = {}
        first = self._compiled(1)
        import openvino as ov

        self.precision = first.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # f32, or bf16 where the CPU has it
        self.description = (f"openvino-cpu {ov.__version__.split('-')[0]} ({threads} thread{'s' if threads > 1 else ''}, "
                            f"float layers in {self.precision})")

    def _compiled(self, batch: int):
        if batch not in self.compiled:
            model = self.model.clone()
            model.reshape({model.inputs[0]: [batch, *self.input_shape[1:]]})
            config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
            self.compiled[batch] = self.core.compile_model(model, "CPU", config)
        return self.compiled[batch]

    def run(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        compiled = self._compiled(images.shape[0])
        return compiled(images)[compiled.outputs[0]]

    def example_input(self, batch: int) -> np.ndarray:
        dims = tuple(d if isinstance(d, int) else 1 for d in self.input_shape[1:])
        return np.random.default_rng(0).standard_normal((batch, *dims)).astype(np.float32)


def profile_layers(path: Path, threads: int, batch: int, runs: int = 30) -> list[dict]:
    """Mean time per executed layer from OpenVINO's own performance counters ("PERF_COUNT"):
    [{name, op, ms}], slowest first. OpenVINO fuses Q/DQ into its layers, so these are its layers,
    not the ONNX file's nodes."""
    core = _core()
    model = core.read_model(str(path))
    shape = [d.get_length() if d.is_static else 1 for d in model.inputs[0].get_partial_shape()]
    model.reshape({model.inputs[0]: [batch, *shape[1:]]})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                 "NUM_STREAMS": 1, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    images = np.random.default_rng(0).standard_normal((batch, *shape[1:])).astype(np.float32)
    totals: dict[str, list] = {}
    for _ in range(runs):
        request.infer({0: images})
        for info in request.profiling_info:
            if info.status.name == "EXECUTED":
                op, seconds = totals.setdefault(info.node_name, [info.node_type, 0.0])
                totals[info.node_name][1] = seconds + info.real_time.total_seconds()
    rows = [{"name": name, "op": op, "ms": 1000.0 * seconds / runs} for name, (op, seconds) in totals.items()]
    return sorted(rows, key=lambda r: r["ms"], reverse=True)
