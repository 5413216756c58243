"""From an INT8 ONNX file to a TensorRT engine on the device.

Every TensorRT run gets a static check of its QDQ graph and a `build_engine.sh` (the exact trtexec
command, runnable after the run folder is copied to the device), since the machine that trains is
rarely the one that deploys. Where TensorRT runs, the engine is built too, checked against ONNX
Runtime on the same images and timed: only then does the report carry a measured engine latency.
"""

from __future__ import annotations

import io
import json
import os
import shlex
from pathlib import Path

import numpy as np

from edgekd import __version__
from edgekd.config import Target
from edgekd.errors import BadInputError, EdgekdError, EnvironmentProblem
from edgekd.export.tensorrt_lint import check_tensorrt_qdq, raise_if_failed
from edgekd.runfolder import INT8_ONNX, atomic_write_bytes, atomic_write_text

ENGINE = "student.engine"
BUILD_SCRIPT = "build_engine.sh"
CHECK_IMAGES = "engine_check_images.npy"  # real test images, so the device compares on them too
MAX_CHECK_IMAGES = 256
WORKSPACE_MB = 1024
MIN_TOP1_AGREEMENT = 0.98  # engine vs ONNX Runtime on the same images; below it the engine is rejected
LOGIT_ATOL = 0.25  # stated beside the max |logit difference|: the profile's default INT8 tolerance
RANDOM_CHECK_IMAGES = 64  # a run folder without CHECK_IMAGES: seeded random inputs instead


def _input_chw(onnx_path: Path) -> tuple[str, tuple[int, int, int]]:
    """The image input's name and (C, H, W), read from the file rather than assumed."""
    import onnx

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except FileNotFoundError:
        raise BadInputError(f"ONNX file not found: {onnx_path}") from None
    except Exception as err:  # DecodeError and friends
        raise BadInputError(f"{onnx_path}: not a readable ONNX model ({type(err).__name__})") from None
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BadInputError(f"{onnx_path}: expected one image input, found {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    chw = tuple(d.dim_value for d in dims[1:])
    if len(dims) != 4 or any(v <= 0 for v in chw):
        raise BadInputError(f"{onnx_path}: input '{inputs[0].name}' is not (batch, C, H, W) with fixed C, H, W")
    return inputs[0].name, chw


def _comment(text: str) -> str:
    """Text for a `#` comment line: printable ASCII only, so nothing can end the comment."""
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in str(text))


def write_build_script(run_dir: Path, target: Target, onnx_name: str = INT8_ONNX,
                       engine_name: str = ENGINE) -> Path:
    """`build_engine.sh` in the run folder: trtexec with the same settings as `build_engine`, then
    `edgekd bench` on the engine. It cds to its own folder, so it runs wherever the folder is copied."""
    run_dir = Path(run_dir)
    name, (c, h, w) = _input_chw(run_dir / onnx_name)
    shapes = {kind: f"{name}:{batch}x{c}x{h}x{w}" for kind, batch in
              (("min", 1), ("opt", target.input.batch), ("max", target.input.max_batch))}
    q = shlex.quote
    lines = [
        "#!/usr/bin/env bash",
        f"# Builds the TensorRT engine for this run on the device ({_comment(target.name)}), then measures it.",
        f"# Written by edgekd {__version__}. INT8 from the graph's own Q/DQ scales (explicit quantization:",
        "# no calibration), FP16 where a layer has no INT8 kernel; batch 1 to "
        f"{target.input.max_batch}, tuned for {target.input.batch}.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"  # JetPack puts it here',
        '"$TRTEXEC" \\',
        f"  --onnx={q(onnx_name)} \\",
        f"  --saveEngine={q(engine_name)} \\",
        "  --int8 --fp16 \\",
        f"  --minShapes={q(shapes['min'])} --optShapes={q(shapes['opt'])} --maxShapes={q(shapes['max'])} \\",
        f"  --memPoolSize=workspace:{WORKSPACE_MB}M",
    ]
    if target.tensorrt_dla:
        lines += [
            "# On a DLA core (the GPU runs what the DLA cannot), add to the trtexec command above:",
            "# --useDLACore=0 --allowGPUFallback",
        ]
    lines.append(f"edgekd bench {q(engine_name)} --target {q(target.name)}")
    path = run_dir / BUILD_SCRIPT
    atomic_write_text(path, "\n".join(lines) + "\n")
    os.chmod(path, 0o755)
    return path


def _engine_parity(engine, reference, images: np.ndarray, max_batch: int) -> dict:
    """Logits of the engine and of ONNX Runtime on the same images, in batches the engine accepts."""
    ours, theirs = [], []
    for start in range(0, len(images), max_batch):
        chunk = np.ascontiguousarray(images[start:start + max_batch], dtype=np.float32)
        ours.append(engine.run(chunk))
        theirs.append(reference.run(chunk))
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    agreement = float((ours.argmax(1) == theirs.argmax(1)).mean())
    max_diff = float(np.abs(ours.astype(np.float64) - theirs).max())
    return {
        "reference": reference.description,
        "samples": len(images),
        "top1_agreement": agreement,
        "min_top1_agreement": MIN_TOP1_AGREEMENT,
        "max_abs_diff": max_diff,
        "atol": LOGIT_ATOL,
        "within_atol": max_diff <= LOGIT_ATOL,
        "ok": agreement >= MIN_TOP1_AGREEMENT,
    }


def _build_and_compare(run_dir: Path, target: Target, int8_onnx: Path, images: np.ndarray | None):
    """Build the engine and compare it with ONNX Runtime: (EngineInfo, runner, parity dict or None)."""
    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner
    from edgekd.runtimes.tensorrt import TensorRTRunner, build_engine

    info = build_engine(int8_onnx, Path(run_dir) / ENGINE, target, WORKSPACE_MB)
    runner = TensorRTRunner(Path(run_dir) / ENGINE)
    parity = None
    if images is not None and len(images):
        parity = _engine_parity(runner, OnnxRuntimeRunner(int8_onnx, target.threads), images, runner.max_batch)
    return info, runner, parity


def _save_check_images(run_dir: Path, images: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(images[:MAX_CHECK_IMAGES], dtype=np.float32))
    atomic_write_bytes(Path(run_dir) / CHECK_IMAGES, buffer.getvalue())


def prepare_engine(run_dir: Path, target: Target, int8_onnx: Path, check_images: np.ndarray | None) -> dict:
    """The TensorRT part of a run's report. Always: the static QDQ check and the build script.
    Where TensorRT runs: the engine, its agreement with ONNX Runtime on `check_images`, and its
    latency at the target's batch. An engine that disagrees is deleted, never reported."""
    from edgekd.runtimes.tensorrt import tensorrt_available

    run_dir, int8_onnx = Path(run_dir), Path(int8_onnx)
    try:
        onnx_name = str(int8_onnx.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        raise BadInputError(f"{int8_onnx} is not inside the run folder {run_dir}") from None
    images = None if check_images is None else np.asarray(check_images, dtype=np.float32)  # torch too
    qdq = check_tensorrt_qdq(int8_onnx)
    write_build_script(run_dir, target, onnx_name=onnx_name)
    if images is not None and len(images):
        _save_check_images(run_dir, images)
    result = {
        "engine": None,
        "engine_note": "",
        "build_script": BUILD_SCRIPT,
        "qdq_check": qdq.as_dict(),  # ok, problems, Q/DQ counts, opset
        "engine_latency_ms": None,
        "engine_parity": None,
    }
    if not qdq.ok:
        result["engine_note"] = (f"not built: the INT8 graph is not TensorRT-ready ({len(qdq.problems)} "
                                 f"problem(s); first: {qdq.problems[0]})")
        return result
    available, why = tensorrt_available()
    if not available:
        result["engine_note"] = (f"not built here: {why}. On the device, run {BUILD_SCRIPT} (trtexec) or "
                                 "`edgekd build-engine RUN_DIR`")
        return result
    info, runner, parity = _build_and_compare(run_dir, target, int8_onnx, images)
    result["engine_parity"] = parity
    if parity is not None and not parity["ok"]:
        (run_dir / ENGINE).unlink(missing_ok=True)
        result["engine_note"] = (f"rejected and deleted: top-1 agreement with ONNX Runtime "
                                 f"{parity['top1_agreement']:.3f} < {MIN_TOP1_AGREEMENT} on {parity['samples']} "
                                 f"images (max |logit difference| {parity['max_abs_diff']:.3g})")
        return result
    result["engine"] = ENGINE
    result["engine_latency_ms"] = runner.measure(target.input.batch, label="engine latency").as_dict()
    checked = "not compared with ONNX Runtime (no images)" if parity is None else (
        f"top-1 agreement with ONNX Runtime {parity['top1_agreement']:.3f} on {parity['samples']} images")
    result["engine_note"] = (f"built with TensorRT {info.tensorrt_version} on {info.gpu} "
                             f"(sm {info.compute_capability}), {'+'.join(info.precision)}, "
                             f"batch {info.min_batch}..{info.max_batch}; {checked}")
    return result


def build_engine_for_run(run_dir: Path) -> str:
    """`edgekd build-engine RUN_DIR`, on the device: build the engine for a run folder copied there,
    check it against ONNX Runtime and time it against the target's budget. One summary line."""
    from pydantic import ValidationError

    from edgekd.runtimes.tensorrt import tensorrt_available

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    try:
        target = Target.model_validate(json.loads(config_path.read_text())["target"])
    except FileNotFoundError:
        raise BadInputError(f"{run_dir} is not an edgekd run folder (no config.json)") from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise BadInputError(f"{config_path}: unreadable ({type(err).__name__}: {err})") from None
    except ValidationError as err:
        raise BadInputError(f"{config_path}: the saved target is not valid ({err.errors()[0]['msg']})") from None
    int8_onnx = run_dir / INT8_ONNX
    if not int8_onnx.is_file():
        raise BadInputError(f"{int8_onnx} not found: the run has no INT8 model (was quantize disabled?)")
    raise_if_failed(check_tensorrt_qdq(int8_onnx), int8_onnx)
    script = write_build_script(run_dir, target)
    available, why = tensorrt_available()
    if not available:
        raise EnvironmentProblem(f"cannot build the engine here ({why}). On the device, run {script} (needs "
                                 f"trtexec), or pip install 'edgekd[tensorrt]' there and rerun edgekd build-engine")
    images, kind = _check_images(run_dir, int8_onnx)
    info, runner, parity = _build_and_compare(run_dir, target, int8_onnx, images)
    if not parity["ok"]:
        (run_dir / ENGINE).unlink(missing_ok=True)
        raise EdgekdError(f"{run_dir / ENGINE}: rejected and deleted: top-1 agreement with ONNX Runtime "
                          f"{parity['top1_agreement']:.3f} < {MIN_TOP1_AGREEMENT} on {parity['samples']} {kind} "
                          f"(max |logit difference| {parity['max_abs_diff']:.3g})")
    latency = runner.measure(target.input.batch, label="engine latency")
    from edgekd.measure.target_latency import off_target_label, on_target_device

    where = f"measured on {target.device.label}" if on_target_device(target)[0] else off_target_label(target)
    limits = {"p50": target.budget_p50_ms, "p99": target.budget.latency_p99_ms}
    checks = {k: getattr(latency, k) <= v for k, v in limits.items() if v is not None}
    stated = ", ".join(f"{k} {getattr(latency, k):.3f} ms vs {v:.3f} ms" for k, v in limits.items() if v is not None)
    return (f"{run_dir / ENGINE}: {latency.runtime}, {'+'.join(info.precision)}, batch "
            f"{info.min_batch}..{info.max_batch}; {'MET' if all(checks.values()) else 'MISSED'} on {target.name} "
            f"at batch {latency.batch}: {stated} ({where}); vs ONNX Runtime on {parity['samples']} {kind}: top-1 "
            f"agreement {parity['top1_agreement']:.3f}, max |logit difference| {parity['max_abs_diff']:.3g} "
            f"(tolerance {LOGIT_ATOL})")


def _check_images(run_dir: Path, int8_onnx: Path) -> tuple[np.ndarray, str]:
    """The test images `prepare_engine` left in the run folder, else seeded random inputs."""
    path = Path(run_dir) / CHECK_IMAGES
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False), "test images"
        except (OSError, ValueError) as err:
            raise BadInputError(f"{path}: unreadable ({err})") from None
    _, chw = _input_chw(int8_onnx)
    return np.random.default_rng(0).standard_normal((RANDOM_CHECK_IMAGES, *chw)).astype(np.float32), "random inputs"
