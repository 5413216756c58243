"""The calibrated latency estimate: its verdict by interval, the shipped phone calibration, and
`edgekd calibrate` with this machine standing in as the device (ONNX Runtime really times the models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import edgekd
from edgekd.config import load_target
from edgekd.verify.latency_budget import budget_verdict
from edgekd.measure.calibrate import graph_features
from edgekd.measure.estimate import estimate_latency, layer_kind
from edgekd.models import create_model
from edgekd.export.onnx_file import export_onnx


def _export(folder: Path, arch: str, size: int, width: float) -> Path:
    torch.manual_seed(0)
    path = folder / f"{arch}-{size}-{width}.onnx"
    export_onnx(create_model(arch, 10, (1, size, size), width).eval(), torch.zeros(1, 1, size, size), path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("calibrate")
    return [_export(folder, "edgekd_cnn", size, width) for size, width in ((28, 0.5), (28, 1.0), (56, 1.0), (56, 2.0))]


def test_a_depthwise_convolution_is_its_own_kind(tmp_path):
    import torchvision

    path = tmp_path / "mbv2.onnx"
    export_onnx(torchvision.models.mobilenet_v2(num_classes=10).eval(), torch.zeros(1, 3, 64, 64), path)
    features, precision = graph_features(path)
    assert precision == "fp32"
    assert features.macs["depthwise"] > 0 and features.macs["pointwise"] > features.macs["depthwise"]
    assert features.macs["fc"] == 1280 * 10
    assert features.moved["memory"] > 0  # the residual Adds


def test_the_uncalibrated_estimate_is_the_form_its_error_was_measured_with(tmp_path):
    """ROOFLINE_ERROR comes from `roofline_ms` over per-kind totals (benchmarks/calibrate_estimator.py);
    a target without a calibration must estimate with exactly that form, depthwise layers included."""
    import torchvision

    from edgekd.measure.calibrate import Point, roofline_ms
    from edgekd.measure.estimate import ROOFLINE_ERROR

    path = tmp_path / "mbv2.onnx"
    export_onnx(torchvision.models.mobilenet_v2(num_classes=10).eval(), torch.zeros(1, 3, 64, 64), path)
    gpu = load_target("server-gpu")  # TensorRT, uncalibrated: its float layers run in FP16
    assert gpu.calibration is None
    latency, _ = estimate_latency(path, gpu, 1)
    features, _ = graph_features(path, 1, precision="fp16")
    point = Point("mbv2", "mobilenet_v2", "fp16", latency.p50, features, gpu.hardware)
    assert roofline_ms(point) == pytest.approx(latency.p50, rel=1e-9)
    assert (latency.p50_low, latency.p50_high) == pytest.approx((latency.p50 / ROOFLINE_ERROR[1],
                                                                 latency.p50 / ROOFLINE_ERROR[0]))


def test_the_phone_estimate_is_calibrated_and_carries_its_error(models):
    mobile = load_target("mobile-cpu")
    assert mobile.calibration is not None and mobile.calibration.int8 is not None
    latency, layers = estimate_latency(models[1], mobile)
    assert latency.source == "estimated" and "calibrated" in latency.runtime
    err = mobile.calibration.error
    assert latency.p50_low == pytest.approx(latency.p50 / err.high)
    assert latency.p50_high == pytest.approx(latency.p50 / err.low)
    assert {layer.kind for layer in layers} <= {"conv", "pointwise", "fc", "pool", "memory", "depthwise"}


def test_an_estimate_is_met_missed_or_not_shown_by_its_interval(models):
    mobile = load_target("mobile-cpu")
    latency = estimate_latency(models[1], mobile)[0].as_dict()
    size = models[1].stat().st_size

    def verdict(limit: float) -> dict:
        budget = mobile.budget.model_copy(update={"latency_p50_ms": limit, "latency_p99_ms": None, "memory_mb": None})
        return budget_verdict(mobile.model_copy(update={"budget": budget}), latency, size)

    above, inside, below = latency["p50_high"] * 1.01, (latency["p50"] + latency["p50_high"]) / 2, latency["p50_low"] * 0.99
    assert verdict(above)["state"] == "MET" and verdict(above)["met"]
    shown = verdict(inside)
    assert shown["state"] == "NOT SHOWN" and not shown["met"] and shown["checks"]["p50"]
    assert shown["verdict"].startswith("NOT SHOWN on mobile-cpu") and "error range" in shown["verdict"]
    assert verdict(below)["state"] == "MISSED" and not verdict(below)["checks"]["p50"]


def test_bench_exits_6_when_the_estimate_cannot_decide(models, tmp_path):
    mobile = load_target("mobile-cpu")
    latency = estimate_latency(models[1], mobile)[0]
    limit = (latency.p50 + latency.p50_high) / 2
    source = (Path(__file__).resolve().parents[1] / "edgekd" / "targets" / "mobile-cpu.toml").read_text()
    source = source.replace("latency_p50_ms = 5.0", f"latency_p50_ms = {limit:.6f}")
    path = tmp_path / "tight-phone.toml"
    path.write_text(source)
    result = edgekd("bench", str(models[1]), "--target", str(path))
    assert result.returncode == 6, result.stdout + result.stderr
    assert "NOT SHOWN on mobile-cpu" in result.stdout


def _stand_in_device(tmp_path: Path) -> Path:
    """This machine as a device whose data sheet overstates its peaks tenfold: the plain roofline is
    then far too fast, as it is for a phone, and there is room for a fit to correct it."""
    source = (Path(__file__).resolve().parents[1] / "edgekd" / "targets" / "host-cpu.toml").read_text()
    import tomllib

    hardware = tomllib.loads(source)["hardware"]
    for key in ("int8_tops", "fp16_tflops", "fp32_tflops", "memory_bandwidth_gbs"):
        source = source.replace(f"{key} = {hardware[key]}", f"{key} = {10 * hardware[key]}")
    path = tmp_path / "stand-in.toml"
    path.write_text(source.replace('name = "host-cpu"', 'name = "stand-in"'))
    return path


def test_calibrate_refits_a_target_to_timings_from_its_device(models, tmp_path):
    device = _stand_in_device(tmp_path)
    reports = []
    for model in models:  # kind = "this-machine": this machine is the device, so bench measures
        result = edgekd("bench", str(model), "--target", str(device), "--json")
        assert result.returncode in (0, 3), result.stderr
        report = tmp_path / f"{model.stem}.json"
        report.write_text(result.stdout)
        assert json.loads(result.stdout)["latency_ms"]["source"] == "measured"
        reports.append(report)
    out = tmp_path / "calibrated.toml"
    result = edgekd("calibrate", *map(str, reports), "--target", str(device), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("fitted without it") == len(models)
    calibrated = load_target(str(out))
    assert calibrated.name == "stand-in" and calibrated.calibration is not None
    assert calibrated.calibration.fp32 is not None and calibrated.calibration.error.points == len(models)
    # the stated error is each model's under a fit made without it; the fit itself follows the
    # device: on the models it was fitted to, the calibrated target is far closer than the roofline
    before = [json.loads(r.read_text()) for r in reports]

    def folded(estimated: float, measured: float) -> float:
        return max(estimated / measured, measured / estimated)

    roofline = sorted(folded(b["latency_estimate_ms"]["p50"], b["latency_ms"]["p50"]) for b in before)
    refitted = sorted(folded(estimate_latency(m, calibrated)[0].p50, b["latency_ms"]["p50"]) for m, b in zip(models, before))
    assert roofline[len(roofline) // 2] > 3  # the overstated data sheet
    assert refitted[len(refitted) // 2] < 2 and refitted[len(refitted) // 2] < roofline[len(roofline) // 2] / 2
    # and the calibrated file is a target like any other
    again = edgekd("bench", str(models[0]), "--target", str(out), "--json")
    assert again.returncode in (0, 3)
    assert "calibrated estimate" in json.loads(again.stdout)["latency_estimate_ms"]["runtime"]


def test_calibrate_refuses_estimates_and_too_few_reports(models, tmp_path):
    result = edgekd("bench", str(models[0]), "--target", "mobile-cpu", "--json")
    estimated = tmp_path / "estimated.json"
    estimated.write_text(result.stdout)
    refused = edgekd("calibrate", str(estimated), str(estimated), str(estimated), "--target", "mobile-cpu",
                     "--out", str(tmp_path / "x.toml"))
    assert refused.returncode == 2 and "estimated, not measured" in refused.stderr
    assert "Traceback" not in refused.stderr
    few = edgekd("calibrate", str(estimated), "--target", "mobile-cpu", "--out", str(tmp_path / "x.toml"))
    assert few.returncode == 2 and "at least 3" in few.stderr
    measured = tmp_path / "measured.json"
    measured.write_text(edgekd("bench", str(models[0]), "--target", "host-cpu", "--json").stdout)
    same = edgekd("calibrate", str(measured), str(measured), str(measured), "--target", "host-cpu",
                  "--out", str(tmp_path / "x.toml"))
    assert same.returncode == 2 and "times the same model" in same.stderr
    assert not (tmp_path / "x.toml").exists()


def test_layer_kinds_follow_the_convolution_shape():
    from onnx import helper

    shapes = {"w_dw": (8, 1, 3, 3), "w_pw": (16, 8, 1, 1), "w_dense": (16, 8, 3, 3)}
    dw = helper.make_node("Conv", ["x", "w_dw"], ["y"], group=8)
    pw = helper.make_node("Conv", ["x", "w_pw"], ["y"])
    dense = helper.make_node("Conv", ["x", "w_dense"], ["y"])
    pool = helper.make_node("GlobalAveragePool", ["x"], ["y"])
    add = helper.make_node("Add", ["x", "x"], ["y"])
    assert [layer_kind(n, shapes) for n in (dw, pw, dense, pool, add)] == ["depthwise", "pointwise", "conv", "pool", "memory"]


JETSON_DEVICES = {"agx-orin-64gb": "jetson-agx-orin", "orin-nx-16gb": "jetson-orin-nx", "orin-nano-super": "jetson-orin-nano"}


def test_the_jetson_check_error_is_the_one_the_docs_state():
    """Recomputed from published.csv, its features and each Jetson target's shipped [calibration]:
    the estimated / measured ratios on the check families (ResNet-50, SSD-MobileNet-v1), per target,
    must be the docs' table, and the targets' interval must cover every published Orin point."""
    import csv
    import re
    import tomllib

    from edgekd.config import Hardware
    from edgekd.measure.calibrate import Features, Point, error_of, ratios

    root = Path(__file__).resolve().parents[1]
    folder = root / "edgekd" / "targets" / "calibration"
    with open(folder / "published_features.csv", newline="") as fh:
        features = {(r["model"], r["input"], r["precision"]): Features.from_dict(r) for r in csv.DictReader(fh)}
    devices = tomllib.loads((folder / "devices.toml").read_text())
    with open(folder / "published.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["device"] in JETSON_DEVICES]
    assert {r["split"] for r in rows} == {"fit", "check"}
    fit_families = {r["family"] for r in rows if r["split"] == "fit"}
    assert not fit_families & {r["family"] for r in rows if r["split"] == "check"}  # split by family

    docs = (root / "docs" / "latency_estimate.md").read_text()
    every, checked = [], 0
    for device, name in JETSON_DEVICES.items():
        calibration = load_target(name).calibration
        assert calibration is not None and calibration.int8 is not None
        effs = {p: getattr(calibration, p) for p in ("int8", "fp16") if getattr(calibration, p) is not None}
        for split in ("check", "fit"):
            for precision in ("int8", "fp16"):
                mine = [r for r in rows if (r["device"], r["split"], r["precision"]) == (device, split, precision)]
                if not mine:
                    continue
                points = [Point(r["model"], r["family"], precision, float(r["latency_ms"]),
                                features[(r["model"], r["input"], precision)], Hardware(**devices[device])) for r in mine]
                values = ratios(points, effs)
                every += values
                err = error_of(values)
                line = (f"| {name} | {split} | {precision} | {err.points} | {err.median:.2f}x | {err.worst:.2f}x | "
                        f"{err.low:.2f} - {err.high:.2f} |")
                assert line in docs, line
                checked += split == "check"
        assert re.search(rf"\| {name} \| check \| int8 \|", docs) or name == "jetson-orin-nano"
    assert checked == 2  # the AGX Orin and the Orin NX have check rows; the Orin Nano has none
    shipped = load_target("jetson-agx-orin").calibration.error
    assert (shipped.low, shipped.high, shipped.points) == (round(min(every), 3), round(max(every), 3), len(every))
