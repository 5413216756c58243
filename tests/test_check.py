"""The regression gate on real measurements: a planted slow-down (the same student at 4x the
width) must fail it, the same student must pass it, and the CLI must say so in its exit code."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgekd.verify.ci_gate import GateResult, compare
from edgekd.cli import app
from edgekd.config import ActivationScheme, load_target
from edgekd.errors import BadInputError, ExitCode
from edgekd.measure.estimate import estimate_layers
from edgekd.measure.normalised_latency import build_reference, gate_latency, reference_description
from edgekd.models import create_model
from edgekd.export.onnx_file import export_onnx

INPUT_SHAPE = (1, 28, 28)
QUICK = {"steps": 150}  # the gate's own timing, fewer steps


def _export(arch: str, width: float, path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model(arch, 10, INPUT_SHAPE, width).eval()
    return export_onnx(model, torch.zeros(1, *INPUT_SHAPE), path)


def _report(student: Path, reference: Path, macs: int, accuracy: float) -> dict:
    """The parts of report.json the gate reads, filled in the way pipeline._reference fills them."""
    student_macs = sum(layer.macs for layer in estimate_layers(student, load_target("host-cpu"), 1))
    return {
        "target": {"name": "host-cpu"},
        "status": "complete",
        "stages": [{"name": "quantize", "accuracy": accuracy, "macs": student_macs}],
        "reference": {"model": reference_description(ActivationScheme.SYMMETRIC), "macs": macs,
                      **gate_latency(student, reference, **QUICK)},
    }


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("gate")
    reference, macs = build_reference(folder / "reference.onnx", 10, INPUT_SHAPE, ActivationScheme.SYMMETRIC, 17)
    small = _export("edgekd_cnn", 0.5, folder / "small.onnx")
    big = _export("edgekd_cnn", 2.0, folder / "big.onnx")  # ~16x the MACs: the planted slow-down
    return {
        "baseline": _report(small, reference, macs, 0.90),
        "again": _report(small, reference, macs, 0.90),  # the same student, timed again
        "slower": _report(big, reference, macs, 0.90),
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
    assert new > 4 * old
    assert result.lines[0] == (f"latency: normalised {old:.3f} -> {new:.3f} ({new / old - 1:+.1%}, "
                               "tolerance 100%): REGRESSION")
    assert result.lines[1].startswith("work: MACs per image ") and result.lines[1].endswith("REGRESSION")
    assert result.lines[2].endswith(": ok")  # accuracy did not move
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
    assert result.lines[2] == "accuracy: top-1 90.00% -> 88.50% (-1.50 points, tolerance 1.00 points): REGRESSION"


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


def _invoke(tmp_path: Path, report: dict, baseline: dict, *more: str):
    report_path, baseline_path = tmp_path / "report.json", tmp_path / "baseline.json"
    report_path.write_text(json.dumps(report))
    baseline_path.write_text(json.dumps(baseline))
    return CliRunner().invoke(app, ["check", str(report_path), "--baseline", str(baseline_path), *more])


def test_cli_exits_4_on_regression(tmp_path, reports):
    result = _invoke(tmp_path, reports["slower"], reports["baseline"])
    assert result.exit_code == ExitCode.REGRESSION == 4, result.output
    assert "REGRESSION" in result.output


def test_cli_exits_0_on_pass(tmp_path, reports):
    result = _invoke(tmp_path, reports["baseline"], reports["baseline"])
    assert result.exit_code == ExitCode.OK == 0, result.output
    assert "PASS" in result.output


@pytest.mark.parametrize(("path", "value", "says"), [
    (("target", "name"), "mobile-cpu", "target is 'mobile-cpu' now, 'host-cpu' in the baseline"),
    (("reference", "threads"), 2, "gate threads is 2 now, 1 in the baseline"),
    (("reference", "batch"), 1, "gate batch is 1 now, 16 in the baseline"),
    (("reference", "macs"), 1, "gate macs is 1 now"),
    (("stages", -1, "name"), "prune", "final stage is 'prune' now, 'quantize' in the baseline"),
])
def test_incomparable_runs_fail_unless_allowed(tmp_path, reports, path, value, says):
    changed = copy.deepcopy(reports["baseline"])
    parent = changed
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    result = compare(changed, reports["baseline"], 0.10, 0.01)
    assert not result.ok and any(line.startswith("MISMATCH: ") and says in line for line in result.lines)
    assert result.lines[-1].startswith("FAIL: the runs are not comparable")
    allowed = compare(changed, reports["baseline"], 0.10, 0.01, allow_mismatch=True)
    assert allowed.ok and any(line.startswith("note: ") and says in line for line in allowed.lines)
    assert _invoke(tmp_path, changed, reports["baseline"]).exit_code == ExitCode.REGRESSION
    assert _invoke(tmp_path, changed, reports["baseline"], "--allow-mismatch").exit_code == ExitCode.OK


def test_a_baseline_from_the_old_gate_is_not_comparable(reports):
    old = copy.deepcopy(reports["baseline"])
    for key in ("batch", "threads", "macs"):
        del old["reference"][key]
    result = compare(reports["baseline"], old, 0.10, 0.01)
    assert not result.ok and any("older edgekd: regenerate it" in line for line in result.lines)


def _with_macs(report: dict, factor: float) -> dict:
    changed = copy.deepcopy(report)
    changed["stages"][-1]["macs"] = round(changed["stages"][-1]["macs"] * factor)
    return changed


def test_more_macs_beyond_tolerance_fails_whatever_the_timing(reports):
    base = reports["baseline"]
    result = compare(_with_macs(base, 1.5), base, 0.10, 0.01)
    macs = base["stages"][-1]["macs"]
    assert not result.ok
    assert result.lines[1] == (f"work: MACs per image {macs:,} -> {round(macs * 1.5):,} (+50.0%, tolerance 10%): "
                               "REGRESSION")
    assert compare(_with_macs(base, 1.05), base, 0.10, 0.01).ok
    assert compare(_with_macs(base, 1.5), base, 0.10, 0.01, macs_tolerance=0.6).ok
