"""The accuracy budget: a student that lost more than the budget never exits 0."""

import json

import pytest

from edgekd.config import PROFILES_DIR, load_profile, load_target
import numpy as np

from edgekd.verify.accuracy_budget import accuracy_floor, accuracy_verdict, pack_hits
from edgekd.models import create_model
from edgekd.export.stage_file import ExportMismatch, export_checked


def _records(*val):
    names = ["teacher", "distill", "prune", "quantize"]
    return [{"name": n, "val_accuracy": v, "accuracy": v} for n, v in zip(names, val)]


def test_the_verdict_names_the_stage_that_broke_the_budget():
    profile, target = load_profile("default"), load_target("host-cpu")
    verdict = accuracy_verdict(_records(0.93, 0.925, 0.90, 0.905), profile, target)
    assert verdict["state"] == "MISSED" and not verdict["met"] and verdict["first_stage_over"] == "prune"
    assert verdict["drop_points"] == pytest.approx(2.5)
    assert "MISSED" in verdict["verdict"] and "prune stage" in verdict["verdict"]
    # records without per-image results give no bound: within the budget is NOT SHOWN, never MET
    within = accuracy_verdict(_records(0.93, 0.925, 0.921, 0.9205), profile, target)
    assert within["state"] == "NOT SHOWN" and not within["met"] and "older edgekd" in within["verdict"]


def test_a_late_collapse_is_named_even_when_an_earlier_stage_was_first_over_budget():
    """Issue 23: distill lost 2.4 points (first over), then QAT collapsed to chance."""
    profile, target = load_profile("default"), load_target("host-cpu")
    verdict = accuracy_verdict(_records(0.9694, 0.945, 0.9503, 0.0278), profile, target)
    assert verdict["first_stage_over"] == "distill" and verdict["most_lost_stage"] == "quantize"
    assert verdict["most_lost_points"] == pytest.approx(92.25)
    assert "first over budget at the distill stage" in verdict["verdict"]
    assert "the quantize stage lost the most (92.25 points below its parent)" in verdict["verdict"]


def _paired(n, teacher_right, student_right, both_right):
    """Records of a teacher and a student on n validation images with the given overlaps."""
    teacher = np.zeros(n, bool)
    student = np.zeros(n, bool)
    teacher[:teacher_right] = True
    student[teacher_right - both_right: teacher_right - both_right + student_right] = True
    return [{"name": "teacher", "val_accuracy": teacher.mean(), "accuracy": teacher.mean(), "test_images": n,
             "test_correct": pack_hits(teacher)},
            {"name": "quantize", "val_accuracy": student.mean(), "accuracy": student.mean(), "test_images": n,
             "test_correct": pack_hits(student)}]


def test_a_small_validation_split_cannot_pass_a_student_it_cannot_vouch_for():
    """The same 0.6-point drop: shown within a 1-point budget on 6,000 images; NOT SHOWN on 160,
    with the number of images that would show it."""
    from edgekd.pipeline import exit_code

    profile, target = load_profile("default"), load_target("host-cpu")
    large = accuracy_verdict(_paired(6000, 5400, 5364, 5364), profile, target)
    assert large["state"] == "MET" and large["met"] and large["drop_points"] == pytest.approx(0.6)
    assert 0.6 < large["drop_upper_points"] < 1.0 and large["images"] == 6000
    small = accuracy_verdict(_paired(160, 144, 143, 143), profile, target)
    assert small["state"] == "NOT SHOWN" and not small["met"] and small["drop_points"] == pytest.approx(0.625)
    assert small["verdict"].startswith("accuracy NOT SHOWN") and "160 test images" in small["verdict"]
    needed = small["images_to_show"]
    assert needed > 160 and f"about {needed:,} test images would show it" in small["verdict"]
    # the number is honest: as many images with the same agreement pattern show it
    scale = -(-needed // 160)
    assert accuracy_verdict(_paired(160 * scale, 144 * scale, 143 * scale, 143 * scale), profile, target)["met"]
    # one exit code per state; a team may let NOT SHOWN pass
    assert exit_code({"met": True, "state": "MET"}) == 0
    assert exit_code({"met": False, "state": "MISSED"}) == 3
    assert exit_code({"met": False, "state": "NOT SHOWN"}) == 6
    assert exit_code({"met": False, "state": "NOT SHOWN", "not_shown_passes": True}) == 0
    assert exit_code({"met": False, "state": "MISSED", "not_shown_passes": True}) == 3


def test_the_bound_is_paired_image_by_image():
    """Two models that disagree on many images are less certain than two that agree."""
    profile, target = load_profile("default"), load_target("host-cpu")
    agree = accuracy_verdict(_paired(2000, 1800, 1790, 1790), profile, target)
    churn = accuracy_verdict(_paired(2000, 1800, 1790, 1600), profile, target)
    assert agree["drop_points"] == churn["drop_points"] == pytest.approx(0.5)
    assert agree["drop_upper_points"] < churn["drop_upper_points"]
    assert agree["met"] and not churn["met"] and churn["state"] == "NOT SHOWN"


def test_a_target_can_tighten_the_budget():
    profile = load_profile("default")
    strict = load_target("host-cpu").model_copy(update={"max_accuracy_drop": 0.25})
    assert accuracy_floor(0.93, profile, strict) == pytest.approx(0.9275)
    assert not accuracy_verdict(_records(0.93, 0.93, 0.93, 0.926), profile, strict)["met"]


PLANT = """
import sys

import torch

import edgekd.stages.quantize as quantize
from edgekd.cli import run

real = quantize.quantize_with_nncf


def broken(*args, **kwargs):
    # quantizers whose ranges are 50x too narrow: every tensor they see saturates
    from nncf.torch.quantization.layers import AsymmetricQuantizer, SymmetricQuantizer

    quantized = real(*args, **kwargs)
    with torch.no_grad():
        for module in quantized.modules():
            if isinstance(module, SymmetricQuantizer):
                module.scale.mul_(0.02)
            elif isinstance(module, AsymmetricQuantizer):
                module.input_range.mul_(0.02)
    return quantized


quantize.quantize_with_nncf = broken
sys.exit(run(sys.argv[1:]))
"""


def test_a_planted_accuracy_collapse_exits_3_naming_the_stage(tmp_path, cache_dir, smoke_run):
    """The real command line, in its own process, with the quantizer's ranges broken."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    plant = tmp_path / "plant.py"
    plant.write_text(PLANT)
    profile = tmp_path / "ptq-smoke.toml"
    profile.write_text((PROFILES_DIR / "smoke.toml").read_text()
                       .replace('method = "qat"', 'method = "ptq"\nmax_extra_epochs = 0'))
    # jetson-orin: TensorRT ships the INT8 graph whatever the timing, so the broken quantizer is what
    # ships (on mobile-cpu the calibrated estimate may ship this tiny student in FP32)
    done = subprocess.run([sys.executable, str(plant), "compress", "--profile", str(profile), "--target", "jetson-orin",
                           "--run-dir", str(tmp_path / "run"), "--cache-dir", str(cache_dir)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "EDGEKD_QUIET": "1"}, timeout=900)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    accuracy = report["budget"]["accuracy"]
    assert done.returncode == 3 and not report["budget"]["met"] and not accuracy["met"], done.stderr[-2000:]
    assert accuracy["first_stage_over"] == "quantize" and accuracy["drop_points"] > 30  # smoke allows 30
    assert accuracy["state"] == report["budget"]["state"] == "MISSED"
    line = next(l for l in done.stdout.splitlines() if l.startswith("accuracy MISSED"))
    assert "quantize" in line and f"{100 * accuracy['teacher']:.2f}%" in line


def test_an_int8_export_that_disagrees_with_its_model_is_an_error(tmp_path, test_images, monkeypatch):
    """The check is real: an exported file that computes something else is refused, not recorded."""
    from types import SimpleNamespace

    import edgekd.export.stage_file as stage_file
    from edgekd.runfolder import RunFolder

    model = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5).eval()
    other = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5).eval()
    real_export = stage_file.export_onnx
    monkeypatch.setattr(stage_file, "export_onnx", lambda m, *a, **k: real_export(other, *a, **k))
    ctx = SimpleNamespace(profile=load_profile("default"), example=test_images[:64], run=RunFolder(tmp_path))
    with pytest.raises(ExportMismatch, match="prune: the exported FP32 file prune.onnx disagrees"):
        export_checked(model, ctx, "prune", "fp32")


def test_a_budget_the_test_split_cannot_decide_exits_6_and_a_team_may_let_it_pass(tmp_path, cache_dir, smoke_run):
    """The real command line: the smoke run re-judged (every stage resumed) with a budget between
    its measured drop and that drop's upper bound: NOT SHOWN, exit 6; `not_shown = "pass"` exits 0
    with the same NOT SHOWN line; `edgekd check --not-shown fail` fails it with exit 6."""
    import shutil

    from tests.conftest import edgekd

    # the student that ships depends on the target and, on host-cpu, on this CPU's timings (on
    # some CPUs INT8 is slower than FP32 for so small a network): first read the drop of the
    # student that mobile-cpu ships (an estimate: the same on every machine), then judge that one
    first = tmp_path / "run-first"
    shutil.copytree(smoke_run[0], first)
    edgekd("compress", "--profile", "smoke", "--target", "mobile-cpu", "--resume", str(first), "--cache-dir", str(cache_dir))
    accuracy = json.loads((first / "report.json").read_text())["budget"]["accuracy"]
    drop, upper = max(accuracy["drop_points"], 0.0), accuracy["drop_upper_points"]
    assert accuracy["images"] == smoke_run[1]["dataset"]["test"] and upper > drop
    smoke = (PROFILES_DIR / "smoke.toml").read_text()
    undecided = smoke.replace("max_drop = 30.0", f"max_drop = {(drop + upper) / 2:.4f}")
    outcomes = {}
    for choice in ("fail", "pass"):
        profile = tmp_path / f"undecided-{choice}.toml"
        profile.write_text(undecided.replace("[accuracy]\n", f'[accuracy]\nnot_shown = "{choice}"\n'))
        run = tmp_path / f"run-{choice}"
        shutil.copytree(first, run)
        done = edgekd("compress", "--profile", str(profile), "--target", "mobile-cpu", "--resume", str(run),
                      "--cache-dir", str(cache_dir))
        report = json.loads((run / "report.json").read_text())
        assert all(s.get("resumed") for s in report["stages"]), "the verdict alone was to be recomputed"
        assert report["budget"]["state"] == report["budget"]["accuracy"]["state"] == "NOT SHOWN"
        assert not report["budget"]["met"]
        line = next(l for l in done.stdout.splitlines() if l.startswith("accuracy "))
        assert line.startswith("accuracy NOT SHOWN") and "test images would show it" in line
        outcomes[choice] = done.returncode
        if choice == "fail":
            checked = [edgekd("check", str(run / "report.json"), "--baseline", str(run / "report.json"), *flag)
                       for flag in ((), ("--not-shown", "fail"))]
    assert outcomes == {"fail": 6, "pass": 0}
    assert [c.returncode for c in checked] == [0, 6]
    assert "NOT SHOWN" in checked[1].stdout


def test_the_bound_is_newcombes_paired_interval():
    """Newcombe's square-and-add interval for paired proportions, on the worked example of Fagerland,
    Lydersen and Laake's "Statistical Analysis of Contingency Tables" (ch. 8, Cavo et al. 2012: 59
    both, 6 first only, 16 second only, 80 neither): 95% CI -0.1186 to -0.0046, so each end is a
    one-sided 97.5% bound."""
    from edgekd.verify.accuracy_budget import newcombe_upper

    assert newcombe_upper(59, 6, 16, 161, 0.975) == pytest.approx(-0.0046, abs=5e-5)
    assert -newcombe_upper(59, 16, 6, 161, 0.975) == pytest.approx(-0.1186, abs=5e-5)


def test_two_models_that_never_disagreed_are_still_bounded_by_what_the_images_can_show():
    """Identical answers on 300 images: the drop is 0, but up to 1% of other images could still
    differ (1 - 0.05^(1/300)), so a 0.5-point budget is NOT SHOWN, and a 2-point one MET."""
    profile, target = load_profile("default"), load_target("host-cpu")
    same = _paired(300, 270, 270, 270)
    verdict = accuracy_verdict(same, profile, target)
    assert verdict["drop_points"] == 0.0
    assert verdict["drop_upper_points"] == pytest.approx(100 * (1 - 0.05 ** (1 / 300)))
    tight = profile.model_copy(update={"accuracy": profile.accuracy.model_copy(update={"max_drop": 0.5})})
    assert accuracy_verdict(same, tight, target)["state"] == "NOT SHOWN"
    loose = profile.model_copy(update={"accuracy": profile.accuracy.model_copy(update={"max_drop": 2.0})})
    assert accuracy_verdict(same, loose, target)["state"] == "MET"
