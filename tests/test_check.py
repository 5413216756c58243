"""The regression gate on real measurements: a planted slow-down (the same student at 8x the
width) must fail it, the same student must pass it, and the CLI must say so in its exit code."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgekd.check import GateResult, compare
from edgekd.cli import app
from edgekd.errors import BadInputError, ExitCode
from edgekd.models import create_model
from edgekd.onnx_export import export_onnx
from edgekd.pipeline import REFERENCE_ARCH
from edgekd.measure.target_latency import host_latency

INPUT_SHAPE = (1, 28, 28)
THREADS = 1  # one core: the machine is shared, and the ratio does not need more


def _export(arch: str, width: float, path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model(arch, 10, INPUT_SHAPE, width).eval()
    return export_onnx(model, torch.zeros(1, *INPUT_SHAPE), path)


def _report(student: Path, reference: Path, accuracy: float) -> dict:
    """The parts of report.json the gate reads, filled in the way pipeline._reference fills them."""
    ref = host_latency(reference, THREADS, 1, label="reference latency")
    own = host_latency(student, THREADS, 1, label="student host latency")
    return {
        "status": "complete",
        "stages": [{"name": "quantize", "accuracy": accuracy}],
        "reference": {
            "model": f"{REFERENCE_ARCH} (seed 0, untrained)",
            "reference_ms": ref.as_dict(),
            "student_ms": own.as_dict(),
            "normalised_latency": own.p50 / ref.p50,
        },
    }


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("gate")
    reference = _export(REFERENCE_ARCH, 1.0, folder / "reference.onnx")
    small = _export("edgekd_cnn", 0.5, folder / "small.onnx")
    big = _export("edgekd_cnn", 4.0, folder / "big.onnx")  # ~50x the MACs: the planted slow-down
    return {
        "baseline": _report(small, reference, 0.90),
        "again": _report(small, reference, 0.90),  # the same student, timed again
        "slower": _report(big, reference, 0.90),
    }


def test_same_report_passes(reports):
    result = compare(reports["baseline"], reports["baseline"], 0.10, 0.01)
    assert isinstance(result, GateResult)
    assert result.ok
    assert result.lines[0].startswith("latency: normalised ")
    assert "(+0.0%, tolerance 10%): ok" in result.lines[0]
    assert result.lines[-1] == "PASS"


def test_same_student_remeasured_passes(reports):
    # timing noise on a shared machine stays well inside 2x; the planted slow-down does not
    assert compare(reports["again"], reports["baseline"], 1.0, 0.01).ok


def test_planted_slowdown_fails(reports):
    result = compare(reports["slower"], reports["baseline"], 1.0, 0.01)
    assert not result.ok
    old = reports["baseline"]["reference"]["normalised_latency"]
    new = reports["slower"]["reference"]["normalised_latency"]
    assert new > 2 * old
    assert result.lines[0] == (f"latency: normalised {old:.3f} -> {new:.3f} ({new / old - 1:+.1%}, "
                               "tolerance 100%): REGRESSION")
    assert result.lines[1].endswith(": ok")  # accuracy did not move
    assert result.lines[-1].startswith("FAIL")


def test_faster_passes(reports):
    assert compare(reports["baseline"], reports["slower"], 0.0, 0.01).ok


def _with_accuracy(report: dict, accuracy: float) -> dict:
    changed = copy.deepcopy(report)
    changed["stages"][-1]["accuracy"] = accuracy
    return changed


def test_accuracy_drop_beyond_tolerance_fails(reports):
    result = compare(_with_accuracy(reports["baseline"], 0.885), reports["baseline"], 0.10, 0.01)
    assert not result.ok
    assert result.lines[1] == "accuracy: top-1 90.00% -> 88.50% (-1.50 points, tolerance 1.00 points): REGRESSION"


def test_accuracy_drop_within_tolerance_passes(reports):
    assert compare(_with_accuracy(reports["baseline"], 0.895), reports["baseline"], 0.10, 0.01).ok
    assert compare(_with_accuracy(reports["baseline"], 0.89), reports["baseline"], 0.10, 0.01).ok  # at the edge


@pytest.mark.parametrize(
    ("remove", "key"),
    [(("reference", "normalised_latency"), "reference.normalised_latency"),
     (("reference",), "reference"),
     (("stages",), "stages")],
)
def test_missing_key_names_file_and_key(reports, remove, key):
    broken = copy.deepcopy(reports["baseline"])
    parent = broken
    for part in remove[:-1]:
        parent = parent[part]
    del parent[remove[-1]]
    with pytest.raises(BadInputError, match=f"^old.json: missing key '{key}'"):
        compare(reports["baseline"], broken, 0.1, 0.01, report_name="new.json", baseline_name="old.json")
    with pytest.raises(BadInputError, match=f"^new.json: missing key '{key}'"):
        compare(broken, reports["baseline"], 0.1, 0.01, report_name="new.json", baseline_name="old.json")


def test_empty_stages_is_bad_input(reports):
    broken = {**reports["baseline"], "stages": []}
    with pytest.raises(BadInputError, match=r"missing key 'stages\[-1\]'"):
        compare(broken, reports["baseline"], 0.1, 0.01)


def _invoke(tmp_path: Path, report: dict, baseline: dict):
    report_path, baseline_path = tmp_path / "report.json", tmp_path / "baseline.json"
    report_path.write_text(json.dumps(report))
    baseline_path.write_text(json.dumps(baseline))
    return CliRunner().invoke(app, ["check", str(report_path), "--baseline", str(baseline_path)])


def test_cli_exits_4_on_regression(tmp_path, reports):
    result = _invoke(tmp_path, reports["slower"], reports["baseline"])
    assert result.exit_code == ExitCode.REGRESSION == 4, result.output
    assert "REGRESSION" in result.output


def test_cli_exits_0_on_pass(tmp_path, reports):
    result = _invoke(tmp_path, reports["baseline"], reports["baseline"])
    assert result.exit_code == ExitCode.OK == 0, result.output
    assert "PASS" in result.output
