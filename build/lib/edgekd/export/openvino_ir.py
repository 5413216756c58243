"""The OpenVINO IR (`.xml` graph + `.bin` weights) of an ONNX file: what an OpenVINO deployment
loads without the ONNX frontend. A QDQ graph converts to FakeQuantize layers and stays INT8;
weights are kept in their precision (no FP16 compression of the FP32 parts)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgekd.errors import BadInputError


def export_openvino_ir(onnx_path: Path, xml_path: Path) -> tuple[Path, Path]:
    """Convert `onnx_path` to `xml_path` and its `.bin` beside it; returns both paths."""
    from edgekd.runtimes.openvino import _core

    _core()  # the same "not installed" message as the runner
    import openvino as ov

    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as err:  # OpenVINO's frontend raises its own error types
        raise BadInputError(f"{onnx_path}: OpenVINO cannot convert it ({str(err).strip().splitlines()[0][:200]})") from None
    xml_path, bin_path = Path(xml_path), Path(xml_path).with_suffix(".bin")
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml_path.parent, prefix=".openvino-") as folder:
        tmp_xml = Path(folder) / xml_path.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), bin_path)  # weights first: an .xml never points at a missing .bin
        os.replace(tmp_xml, xml_path)
    return xml_path, bin_path
