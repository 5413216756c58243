"""The runtime registry: one backend per runtime a target can name (ONNX Runtime, OpenVINO,
TensorRT), looked up by `backend(target)`. Each says whether it runs here, builds the runner that
times a model, and profiles a model per layer with its own profiler. Code outside `runtimes/`
asks its backend, never "which runtime is this?".

Optional runtimes (`openvino`, `tensorrt` and `pycuda`) are imported only inside their own modules,
and only when a backend method needs them.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.config import Runtime

if TYPE_CHECKING:
    from edgekd.config import Target
    from edgekd.runtimes.base import Runner


class Backend(abc.ABC):
    """What every runtime offers the rest of edgekd."""

    runtime: Runtime
    needs_engine = False  # TensorRT times a built engine, not the ONNX file

    @abc.abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, "") where this runtime runs on this machine, else (False, why not)."""

    @abc.abstractmethod
    def runner(self, model: Path, threads: int) -> Runner:
        """A loaded model (ONNX file, IR or engine) that runs and times itself."""

    def profile_layers(self, model: Path, threads: int, batch: int) -> list[dict] | None:
        """[{name, op, ms}] slowest first, from the runtime's own profiler; None where it has none here."""
        return None


class OnnxRuntimeBackend(Backend):
    runtime = Runtime.ONNXRUNTIME_CPU

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

    def available(self) -> tuple[bool, str]:
        from edgekd.runtimes.openvino import openvino_available

        return openvino_available()

    def runner(self, model: Path, threads: int) -> Runner:
        from edgekd.runtimes.openvino import OpenVinoRunner

        return OpenVinoRunner(model, threads)

    def profile_layers(self, model: Path, threads: int, batch: int) -> list[dict]:
        from edgekd.runtimes.openvino import profile_layers

        return profile_layers(model, threads, batch)


class TensorRTBackend(Backend):
    runtime = Runtime.TENSORRT
    needs_engine = True

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
