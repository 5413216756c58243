"""`student.int8.ort`: the INT8 student in ONNX Runtime's ORT format, for ONNX Runtime Mobile.

ONNX Runtime Mobile (the Android/iOS packages and reduced-size builds) loads the ORT format, a
FlatBuffers file with the graph already optimised. Runs for an `onnxruntime-cpu` target on
`aarch64` (a phone, `mobile-cpu`) write it beside `student.int8.onnx`, converted by ONNX Runtime's
own converter (`onnxruntime.tools.convert_onnx_models_to_ort`, the Python API of
`python -m onnxruntime.tools.convert_onnx_models_to_ort`) with the settings its help gives for an
Arm CPU without NNAPI/CoreML: optimisation style "Fixed" (optimised now, nothing replayed at load)
and target platform "arm" (no x86-only NCHWc layout; signed INT8 QDQ allowed). The file is then checked,
not assumed: it is loaded in ONNX Runtime and run on the example batch beside the ONNX student, and
must give the same top-1 on every image and logits within the profile's `export.int8_atol`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np

from edgekd.config import ExportConfig, Target
from edgekd.errors import EdgekdError

ORT_FILE = "student.int8.ort"
OPS_CONFIG = "student.int8.required_operators.config"  # for a reduced ONNX Runtime build (--include_ops_by_config)


def wants_ort_format(target: Target) -> bool:
    """ONNX Runtime on an Arm CPU: the targets whose deployable file is the ORT format."""
    from edgekd.runtimes import backend

    return backend(target).mobile_format and target.machine == "aarch64"


def convert_to_ort(onnx_path: Path, ort_path: Path) -> Path:
    """Convert `onnx_path` with ONNX Runtime's converter and move the result to `ort_path`
    (atomically), with the converter's operator list beside it as OPS_CONFIG."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from edgekd.runfolder import atomic_write_bytes, atomic_write_text

    ort_path = Path(ort_path)
    with tempfile.TemporaryDirectory(dir=ort_path.parent, prefix=".ort-") as work:
        source = Path(work) / "model.onnx"  # the converter names its outputs after the input file
        source.write_bytes(Path(onnx_path).read_bytes())
        chatter = io.StringIO()
        logger = logging.getLogger("ort_format_model.utils")  # logs each config file it writes, at INFO
        level = logger.level
        try:
            logger.setLevel(logging.WARNING)
            with contextlib.redirect_stdout(chatter):  # it prints progress; stdout is the CLI's
                convert_onnx_models_to_ort(source, output_dir=Path(work) / "out",
                                           optimization_styles=[OptimizationStyle.Fixed], target_platform="arm")
        except Exception as err:  # ORT raises its own Fail / InvalidGraph types
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise EdgekdError(f"{onnx_path}: ONNX Runtime's ORT-format converter failed ({first})") from None
        finally:
            logger.setLevel(level)
        converted = Path(work) / "out" / "model.ort"
        configs = sorted((Path(work) / "out").glob("*.config"))
        atomic_write_bytes(ort_path, converted.read_bytes())
        if configs:
            text = configs[0].read_text().replace(str(converted), ort_path.name)  # not the temporary path
            atomic_write_text(ort_path.parent / OPS_CONFIG, text)
    return ort_path


def check_ort(ort_path: Path, onnx_path: Path, images: np.ndarray, atol: float) -> dict:
    """Load the ORT file in ONNX Runtime and compare its logits with the ONNX student's on `images`."""
    import onnxruntime as ort

    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner, session_options

    try:
        session = ort.InferenceSession(str(ort_path), session_options(1), providers=["CPUExecutionProvider"])
    except Exception as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise EdgekdError(f"{ort_path}: ONNX Runtime cannot load it ({first})") from None
    images = np.ascontiguousarray(images, dtype=np.float32)
    actual = session.run(None, {session.get_inputs()[0].name: images})[0]
    expected = OnnxRuntimeRunner(onnx_path, threads=1).run(images)
    return {"max_abs_diff": float(np.abs(actual - expected).max()),
            "top1_agreement": float((actual.argmax(1) == expected.argmax(1)).mean()),
            "samples": len(images), "atol": atol}


def write_ort_format(run_root: Path, target: Target, int8_onnx: str | None, images: np.ndarray,
                     export: ExportConfig) -> dict | None:
    """For a mobile target with an INT8 student: write and check `student.int8.ort`; return the
    record report.json keeps as `ort_format` (file, ops config, parity). None for other runs."""
    if not wants_ort_format(target) or int8_onnx is None:
        return None
    run_root = Path(run_root)
    onnx_path = run_root / int8_onnx
    ort_path = convert_to_ort(onnx_path, run_root / ORT_FILE)
    parity = check_ort(ort_path, onnx_path, images, export.int8_atol)
    if parity["top1_agreement"] < 1.0 or parity["max_abs_diff"] > export.int8_atol:
        raise EdgekdError(f"{ort_path}: disagrees with {int8_onnx} in ONNX Runtime (top-1 agreement "
                          f"{parity['top1_agreement']:.2%}, max |logit diff| {parity['max_abs_diff']:.3g}, "
                          f"tolerance {export.int8_atol:g})")
    import onnxruntime as ort

    return {"file": ORT_FILE, "ops_config": OPS_CONFIG if (run_root / OPS_CONFIG).is_file() else None,
            "converter": f"onnxruntime.tools.convert_onnx_models_to_ort {ort.__version__} "
                         "(optimization style Fixed, target platform arm)",
            "size_bytes": ort_path.stat().st_size, "parity": parity}
