"""TensorRT: the only module that imports `tensorrt` or `pycuda` (the optional extra), and only
inside functions, so the rest of edgekd imports and runs where neither is installed.

Written for the TensorRT 10 Python API: engines are built with `build_serialized_network` and run
by tensor name (`set_input_shape`, `set_tensor_address`, `execute_async_v3`); the binding-index
API of TensorRT 8 is gone.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekd.config import Target
from edgekd.errors import BadInputError, EdgekdError, EnvironmentProblem
from edgekd.runfolder import atomic_write_bytes, atomic_write_json, sha256
from edgekd.runtimes.base import Runner

DLA_CORE_ENV = "EDGEKD_DLA_CORE"


def tensorrt_available() -> tuple[bool, str]:
    """(True, "") where TensorRT and a CUDA GPU can be used, else (False, why not)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "the tensorrt package is not installed; pip install 'edgekd[tensorrt]' on the device"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            return False, "no CUDA GPU found"
    except Exception as err:  # ImportError, or a CUDA driver error
        return False, f"pycuda/CUDA unavailable ({type(err).__name__}: {err})"
    return True, ""


@dataclass(frozen=True)
class EngineInfo:
    """What an engine was built with and for: also written beside it as `<engine>.json`."""

    engine: str  # file name of the serialized engine
    onnx: str  # file name of the ONNX graph it was built from
    onnx_sha256: str  # so a stale engine (the ONNX changed since) can be recognised
    tensorrt_version: str
    gpu: str
    compute_capability: str  # engines only run on the GPU architecture they were built on
    min_batch: int
    opt_batch: int
    max_batch: int
    precision: list[str]  # builder flags: "int8" (scales from the graph's Q/DQ), "fp16" (fallback)
    dla_core: int | None  # None: GPU only
    workspace_mb: int
    build_seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def sidecar_path(engine_path: Path) -> Path:
    return Path(engine_path).with_name(Path(engine_path).name + ".json")


@functools.lru_cache(maxsize=1)
def _logger():
    """One logger for the process: TensorRT keeps a pointer to it in every builder and runtime.
    It prints warnings and errors, and remembers errors so exceptions can quote them."""
    import tensorrt as trt

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                print(f"TensorRT: {msg}", file=sys.stderr)

    return Logger()


@functools.lru_cache(maxsize=1)
def _cuda_device() -> tuple[str, str]:
    """(name, compute capability) of the GPU this process uses. pycuda.autoinit makes a context on
    it current, once; TensorRT's runtime calls run in that same context."""
    import pycuda.autoinit  # noqa: F401
    import pycuda.driver as cuda

    device = cuda.Context.get_device()
    major, minor = device.compute_capability()
    return device.name(), f"{major}.{minor}"


def _first_errors(errors: list[str]) -> str:
    if not errors:
        return "no message from TensorRT"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return errors[0].strip().splitlines()[0][:300] + more


def _parser_error(error) -> str:
    """One parser error as a line: which node, which op, what went wrong."""
    name = error.node_name() if hasattr(error, "node_name") else ""  # TensorRT 10 names the node
    op = error.node_operator() if hasattr(error, "node_operator") else ""
    node = f"node {name} ({op}): " if name else (f"node #{error.node()}: " if error.node() >= 0 else "")
    return node + (error.desc().strip().splitlines() or ["(no description)"])[0][:300]


def _dla_core(target: Target, builder) -> int | None:
    """A DLA core only where the target has one and EDGEKD_DLA_CORE names it: the DLA runs fewer
    layer types than the GPU, so it is opt-in, with GPU fallback for the rest."""
    raw = os.environ.get(DLA_CORE_ENV)
    if not target.tensorrt_dla or raw is None or raw == "":
        return None
    try:
        core = int(raw)
    except ValueError:
        raise BadInputError(f"{DLA_CORE_ENV}={raw!r}: not a DLA core number (0 or 1)") from None
    if not 0 <= core < builder.num_DLA_cores:
        raise EnvironmentProblem(f"{DLA_CORE_ENV}={core}, but this device has {builder.num_DLA_cores} DLA core(s)")
    return core


def build_engine(onnx_path: Path, engine_path: Path, target: Target, workspace_mb: int = 1024) -> EngineInfo:
    """INT8 engine from a QDQ graph (explicit quantization: the graph's scales, no calibrator), FP16
    allowed where a layer has no INT8 kernel, for batches 1..target.input.max_batch tuned at
    target.input.batch. Writes the engine and its `<engine>.json` atomically."""
    import tensorrt as trt

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    gpu, capability = _cuda_device()
    logger = _logger()
    logger.errors.clear()
    started = time.perf_counter()
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; weakly typed (no STRONGLY_TYPED flag), so
    # the INT8/FP16 builder flags below are allowed to choose precisions between the Q/DQ pairs.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), path=str(onnx_path)):
        more = f" (and {parser.num_errors - 1} more)" if parser.num_errors > 1 else ""
        raise BadInputError(f"{onnx_path}: TensorRT's ONNX parser rejected it: "
                            f"{_parser_error(parser.get_error(0))}{more}")
    if network.num_inputs != 1:
        raise BadInputError(f"{onnx_path}: expected one input (images), found {network.num_inputs}")
    image = network.get_input(0)
    shape = tuple(image.shape)  # (-1, C, H, W) for edgekd's exports: the batch is dynamic
    if any(d < 0 for d in shape[1:]):
        raise BadInputError(f"{onnx_path}: input '{image.name}' has dynamic dims {shape}; only the batch may be")
    config = builder.create_builder_config()
    precision = []
    for name in ("INT8", "FP16"):
        if hasattr(trt.BuilderFlag, name):  # optional: TensorRT 11 networks are all strongly typed
            config.set_flag(getattr(trt.BuilderFlag, name))
            precision.append(name.lower())
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    batches = (1, target.input.batch, target.input.max_batch)
    if shape[0] < 0:
        profile = builder.create_optimization_profile()
        low, opt, high = [(b, *shape[1:]) for b in batches]
        profile.set_shape(image.name, min=low, opt=opt, max=high)
        config.add_optimization_profile(profile)
    else:
        batches = (shape[0],) * 3
    dla_core = _dla_core(target, builder)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgekdError(f"TensorRT could not build an engine from {onnx_path}: {_first_errors(logger.errors)}")
    atomic_write_bytes(engine_path, bytes(serialized))
    info = EngineInfo(
        engine=engine_path.name, onnx=onnx_path.name, onnx_sha256=sha256(onnx_path),
        tensorrt_version=trt.__version__, gpu=gpu, compute_capability=capability,
        min_batch=batches[0], opt_batch=batches[1], max_batch=batches[2], precision=precision,
        dla_core=dla_core, workspace_mb=workspace_mb, build_seconds=round(time.perf_counter() - started, 2),
    )
    atomic_write_json(sidecar_path(engine_path), info.as_dict())
    return info


class TensorRTRunner(Runner):
    """One engine, one execution context, one CUDA stream, and pinned host and device buffers sized
    for the engine's largest batch. `run` is timed end to end (copy in, execute, copy out), as an
    application on the device would see it."""

    def __init__(self, engine_path: Path):
        import pycuda.driver as cuda
        import tensorrt as trt

        self.path = Path(engine_path)
        gpu, _ = _cuda_device()
        logger = _logger()
        logger.errors.clear()
        self._runtime = trt.Runtime(logger)  # must outlive the engine it deserializes
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            raise BadInputError(f"engine not found: {self.path}") from None
        self.engine = self._runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise BadInputError(f"{self.path}: TensorRT {trt.__version__} cannot load this engine (built by another "
                                f"TensorRT version or for another GPU?): {_first_errors(logger.errors)}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BadInputError(f"{self.path}: expected one input and one output, found {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if shape[0] < 0:
            low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.min_batch, self.max_batch = low[0], high[0]
        else:
            self.min_batch = self.max_batch = shape[0]
        self.input_shape = shape[1:]  # C, H, W
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self._set_batch(self.max_batch)
        out_max = tuple(self.context.get_tensor_shape(self.output_name))
        self._host_in = cuda.pagelocked_empty(int(np.prod((self.max_batch, *self.input_shape))), self.input_dtype)
        self._host_out = cuda.pagelocked_empty(int(np.prod(out_max)), self.output_dtype)
        self._device_in = cuda.mem_alloc(self._host_in.nbytes)
        self._device_out = cuda.mem_alloc(self._host_out.nbytes)
        self.context.set_tensor_address(self.input_name, int(self._device_in))
        self.context.set_tensor_address(self.output_name, int(self._device_out))
        self.stream = cuda.Stream()
        self.description = f"tensorrt {trt.__version__} on {gpu}"

    def _set_batch(self, batch: int) -> None:
        if getattr(self, "_batch", None) == batch:
            return
        if not self.context.set_input_shape(self.input_name, (batch, *self.input_shape)):
            raise BadInputError(f"{self.path}: TensorRT refused input shape {(batch, *self.input_shape)}")
        self._batch = batch

    def run(self, images: np.ndarray) -> np.ndarray:
        import pycuda.driver as cuda

        images = np.asarray(images)
        if tuple(images.shape[1:]) != self.input_shape:
            raise BadInputError(f"images of shape {images.shape[1:]}; the engine takes {self.input_shape}")
        if not self.min_batch <= len(images) <= self.max_batch:
            raise BadInputError(f"batch {len(images)} is outside the engine's range "
                                f"{self.min_batch}..{self.max_batch}")
        self._set_batch(len(images))
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        host_in = self._host_in[: images.size]
        host_out = self._host_out[: int(np.prod(out_shape))]
        np.copyto(host_in, images.ravel(), casting="same_kind")
        cuda.memcpy_htod_async(self._device_in, host_in, self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise EdgekdError(f"{self.path}: TensorRT execution failed")
        cuda.memcpy_dtoh_async(host_out, self._device_out, self.stream)
        self.stream.synchronize()
        return host_out.reshape(out_shape).copy()

    def example_input(self, batch: int) -> np.ndarray:
        return np.random.default_rng(0).standard_normal((batch, *self.input_shape)).astype(self.input_dtype)

