"""The runtime registry: one backend per runtime a target can name (ONNX Runtime, OpenVINO,
TensorRT), looked up by `backend(target)`. Each says whether it runs here, builds the runner that
times a model, and profiles a model per layer with its own profiler. Code outside `runtimes/`
asks its backend, never "which runtime is this?".

Optional runtimes (`openvino`, `tensorrt` and `pycuda`) are imported only inside their own modules,
and only when a backend method needs them.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.config import Runtime

if TYPE_CHECKING:
    from edgekd.config import Target
    from edgekd.runtimes.base import Runner


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a container or `taskset` narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def timing_threads(target: Target) -> int:
    """The threads a model is timed with here: the target's, but never more than this machine's
    CPUs (a 4-thread phone target timed under --measure-here on 2 cores would time the scheduler
    switching threads, not the model). The runner's description states the count it ran with."""
    return max(1, min(target.threads, usable_cpus()))


class Backend(abc.ABC):
    """What every runtime offers the rest of edgekd."""

    runtime: Runtime
    needs_engine = False  # TensorRT times a built engine, not the ONNX file
    engine_from_int8 = False  # its deployable is built from the INT8 graph, whichever file is faster
    places_int8_itself = True  # NNCF's Q/DQ placement fits it; False: edgekd re-places them (ORT)
    float_precision = "fp32"  # what its float layers run in on an INT8 target (TensorRT: fp16)
    mobile_format = False  # an Arm build of it reads a mobile file format (ORT's .ort)
    reads_ir = False  # it runs OpenVINO IR (.xml + .bin)

    @abc.abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, "") where this runtime runs on this machine, else (False, why not)."""

    @abc.abstractmethod
    def runner(self, model: Path, threads: int) -> Runner:
        """A loaded model (ONNX file, IR or engine) that runs and times itself."""

    def profile_layers(self, model: Path, threads: int, batch: int) -> list[dict] | None:
        """[{name, op, ms}] slowest first, from the runtime's own profiler; None where it has none here."""
        return None

    def write_deployables(self, root: Path, onnx_files: dict[str, Path]) -> dict[str, str]:
        """The runtime's own files beside the shipped ONNX ones ({precision: path}); report names."""
        return {}


class OnnxRuntimeBackend(Backend):
    runtime = Runtime.ONNXRUNTIME_CPU
    places_int8_itself = False  # export.ort_qdq moves Q/DQ where ORT fuses them
    mobile_format = True

    def available(self) -> tuple[bool, str]:
        return True, ""  # a core dependency

    def runner(self, model: Path, threads: int) -> Runner:
        from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(model, threads)

    def profile_layers(self, model: Path, threads: int, batch: int) -> list[dict]:
        from edgekd.runtimes.onnxruntime import profile_layers

        return profile_layers(model, threads, batch)


class OpenVinoBackend(Backend):
    runtime = Runtime.OPENVINO_CPU
    reads_ir = True

    def available(self) -> tuple[bool, str]:
        from edgekd.runtimes.openvino import openvino_available

        return openvino_available()

    def runner(self, model: Path, threads: int) -> Runner:
        from edgekd.runtimes.openvino import OpenVinoRunner

        return OpenVinoRunner(model, threads)

    def profile_layers(self, model: Path, threads: int, batch: int) -> list[dict]:
        from edgekd.runtimes.openvino import profile_layers

        return profile_layers(model, threads, batch)

    def write_deployables(self, root: Path, onnx_files: dict[str, Path]) -> dict[str, str]:
        """OpenVINO IR (.xml + .bin) of each shipped ONNX file."""
        from edgekd.export.openvino_ir import export_openvino_ir

        files = {}
        for precision, source in onnx_files.items():
            xml, weights = export_openvino_ir(source, root / f"student.{precision}.xml")
            files.update({f"openvino_{precision}_xml": xml.name, f"openvino_{precision}_bin": weights.name})
        return files


class TensorRTBackend(Backend):
    runtime = Runtime.TENSORRT
    needs_engine = True
    engine_from_int8 = True
    float_precision = "fp16"

    def available(self) -> tuple[bool, str]:
        from edgekd.runtimes.tensorrt import tensorrt_available

        available, why = tensorrt_available()
        return (True, "") if available else (False, f"TensorRT is not available here ({why})")

    def runner(self, model: Path, threads: int) -> Runner:
        from edgekd.runtimes.tensorrt import TensorRTRunner

        return TensorRTRunner(model)


BACKENDS: dict[Runtime, Backend] = {b.runtime: b for b in (OnnxRuntimeBackend(), OpenVinoBackend(), TensorRTBackend())}


def backend(target: Target) -> Backend:
    """The backend of the target's runtime."""
    return BACKENDS[target.runtime]
