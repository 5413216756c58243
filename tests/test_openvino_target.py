"""An OpenVINO target end to end: the smoke run re-judged for `intel-n100` with `--measure-here`
times every stage in OpenVINO's CPU plugin (not ONNX Runtime), says it measured off the device,
and writes IR files that OpenVINO runs with the same answers as the ONNX file they came from."""

import json
import shutil

import numpy as np
import pytest

from edgekd.pipeline import exit_code

pytest.importorskip("openvino")  # in the `test` extra: CI runs this


def test_an_openvino_target_is_measured_in_openvino_and_ships_ir(smoke_run, cache_dir, tmp_path):
    import onnxruntime as ort
    import openvino as ov

    from tests.conftest import edgekd

    run = tmp_path / "n100"
    shutil.copytree(smoke_run[0], run)
    done = edgekd("compress", "--profile", "smoke", "--target", "intel-n100", "--measure-here",
                  "--resume", str(run), "--cache-dir", str(cache_dir))
    report = json.loads((run / "report.json").read_text())
    assert done.returncode == exit_code(report["budget"]), done.stderr[-2000:]
    assert all(s.get("resumed") for s in report["stages"])  # the models are the host run's
    from edgekd.runtimes import usable_cpus

    threads = min(4, usable_cpus())  # the target's 4, never more than this machine has
    for stage in report["stages"]:
        assert stage["latency_ms"]["runtime"].startswith("openvino-cpu"), stage["latency_ms"]
        assert f"({threads} threads" in stage["latency_ms"]["runtime"], stage["latency_ms"]
        assert stage["latency_ms"]["source"] == "measured"
    budget = report["budget"]
    assert budget["source"] == "measured" and not budget["on_target"]  # this machine is no N100
    assert "not on Intel Processor N100" in budget["verdict"]
    if threads < 4:
        assert f"with {threads} threads (the target's 4 exceed this machine's CPUs)" in budget["verdict"]
    assert budget["latency_state"] == "MET"  # ~0.1 ms against 3 ms, on any CPU that runs the suite
    assert "openvino-cpu" in report["shipped"]["reason"]

    # the IR of the INT8 file is always written, the FP32 one's where FP32 ships (the timing above
    # decides which, and may go either way on a 2-core host); each runs as its ONNX file does
    images = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    core = ov.Core()
    shipped = report["shipped"]["precision"]
    assert (run / "student.fp32.xml").exists() == (shipped == "fp32")
    for precision in sorted({"int8", shipped}):
        xml = run / f"student.{precision}.xml"
        assert xml.exists() and xml.with_suffix(".bin").exists()
        compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        from_ir = np.concatenate([compiled(image[None])[0] for image in images])
        session = ort.InferenceSession(str(run / f"student.{precision}.onnx"), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        from_onnx = np.concatenate([session.run(None, {name: image[None]})[0] for image in images])
        assert (from_ir.argmax(1) == from_onnx.argmax(1)).mean() >= 0.75, precision
        if precision == "fp32":
            np.testing.assert_allclose(from_ir, from_onnx, rtol=1e-3, atol=1e-3)
