"""report.html from a hand-written report.json with the pipeline's schema (a real run is too slow
for a unit test): the page names every stage and the verdict, embeds both plots, keeps the PNGs."""

from __future__ import annotations

import base64
import copy
import re

import pytest

from edgekd.report.html import write_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _latency(p50: float, source: str = "measured", runs: int = 150) -> dict:
    runtime = "onnxruntime-cpu 1.22.0 (2 threads)" if source == "measured" else "roofline estimate for host-cpu"
    return {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.8, "source": source, "runtime": runtime,
            "batch": 1, "runs": runs if source == "measured" else 0}


def _stage(name: str, accuracy: float, p50: float, estimate: float, params: int, onnx: str) -> dict:
    return {
        "name": name, "accuracy": accuracy, "params": params, "macs": params * 80, "size_bytes": params * 4 + 2000,
        "latency_ms": _latency(p50), "latency_estimate_ms": _latency(estimate, "estimated"), "latency_note": "",
        "onnx": onnx, "seconds": 1.5, "details": {},
    }


@pytest.fixture
def report() -> dict:
    """Shaped like /tmp/r1/report.json from `edgekd compress --profile smoke --target host-cpu`."""
    return {
        "edgekd_version": "0.1.0",
        "created": "2026-01-01T00:00:00+00:00",
        "target": {"name": "host-cpu", "runtime": "onnxruntime-cpu", "precision": "int8", "activations": "asymmetric",
                   "batch": 1, "threads": 2, "machine": "any"},
        "profile": "smoke",
        "dataset": {"name": "fashion-mnist", "train": 4096, "test": 1024, "classes": ["a", "b"],
                    "input_shape": [1, 28, 28]},
        "stages": [
            _stage("teacher", 0.91, 0.164, 0.076, 41374, "stages/teacher.onnx"),
            _stage("distill", 0.88, 0.063, 0.029, 15554, "stages/distill.onnx"),
            _stage("prune", 0.86, 0.076, 0.022, 4038, "stages/prune.onnx"),
            _stage("quantize", 0.87, 0.081, 0.019, 4038, "student.int8.onnx"),
        ],
        "student": {"stage": "quantize", "onnx": "student.int8.onnx"},
        "budget": {"latency_ms": {"p50": 1.0, "p99": 3.0}, "memory_mb": None, "fps": None, "met": True,
                   "checks": {"p50": True, "p99": True}, "source": "measured",
                   "verdict": "MET on host-cpu: p50 0.081 ms vs 1.000 ms, p99 0.146 ms vs 3.000 ms; measured"},
        "reference": {"model": "edgekd_resnet (seed 0, untrained)", "onnx": "stages/reference.onnx",
                      "reference_ms": _latency(0.211, runs=100), "student_ms": _latency(0.081),
                      "normalised_latency": 0.3819},
        "layers": [{"name": f"/features/features.{i}/Conv", "op": "QLinearConv", "ms": 0.05 / (i + 1),
                    "source": "measured"} for i in range(25)],
        "artifacts": {"student_fp32_onnx": "student.fp32.onnx", "student_int8_onnx": "student.int8.onnx",
                      "checkpoint_distill": "checkpoints/distill.pt", "report_json": "report.json"},
        "seconds": 15.0,
    }


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_measured_report(tmp_path, report):
    path = write_html(report, tmp_path)
    assert path == tmp_path / "report.html"
    page = path.read_text()
    for stage in ("teacher", "distill", "prune", "quantize"):
        assert f"<td>{stage}</td>" in page
    assert "BUDGET MET" in page
    assert report["budget"]["verdict"] in page
    assert "0.382" in page  # normalised latency
    assert "91.00%" in page and "41,374" in page
    assert "measured by ONNX Runtime&#x27;s profiler" in page
    assert '<a href="student.int8.onnx">' in page

    images = _images(page)
    assert page.count("data:image/png;base64,") == 2 and len(images) == 2
    for name, embedded in zip(("accuracy_latency.png", "layers.png"), images):
        kept = (tmp_path / name).read_bytes()
        assert kept.startswith(PNG_MAGIC)
        assert kept == embedded  # the page shows exactly the files it keeps
    assert not re.search(r"<script|https?://", page)  # self-contained: no script, nothing fetched


def test_estimated_missed_report(tmp_path, report):
    """A target that cannot be measured here: the verdict says missed and estimated, the layers
    plot is the roofline's, and the page says why the numbers are estimates."""
    report = copy.deepcopy(report)
    report["target"]["name"] = "jetson-orin-nano"
    note = "jetson-orin-nano is a aarch64 device; this host cannot run its CPU"
    for stage in report["stages"]:
        stage["latency_ms"] = stage["latency_estimate_ms"] = _latency(stage["latency_estimate_ms"]["p50"] * 100, "estimated")
        stage["latency_note"] = note
    report["budget"].update(met=False, source="estimated", checks={"p50": False, "p99": True},
                            verdict="MISSED on jetson-orin-nano: p50 1.900 ms vs 1.000 ms; estimated")
    report["layers"] = [{**layer, "source": "estimated", "precision": "int8"} for layer in report["layers"]]
    report["budget"]["accuracy"] = {"met": False, "verdict": "accuracy MISSED: student (quantize) 87.00% vs teacher "
                                                             "91.00% on validation: lost 4.00 points"}
    report["budget"]["teacher"] = {"line": "against the teacher: the teacher alone runs 16.400 ms p50 (FP32, "
                                           "estimated) and misses the 1 ms budget"}
    page = write_html(report, tmp_path).read_text()
    assert "BUDGET MISSED" in page
    for line in (report["budget"]["verdict"], report["budget"]["accuracy"]["verdict"], report["budget"]["teacher"]["line"]):
        assert line in page  # all three verdict lines, as the console prints them
    assert "roofline estimate, not a measurement" in page
    assert "estimated by the roofline for jetson-orin-nano" in page
    assert note in page
    assert "measured / estimate" not in page  # no estimate-beside-measurement column without measurements
    assert len(_images(page)) == 2
    assert (tmp_path / "layers.png").read_bytes().startswith(PNG_MAGIC)


def test_html_escapes_names(tmp_path, report):
    report["stages"][0]["name"] = "<b>teacher</b>"
    page = write_html(report, tmp_path).read_text()
    assert "&lt;b&gt;teacher&lt;/b&gt;" in page and "<b>teacher</b>" not in page
