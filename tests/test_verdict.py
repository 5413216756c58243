"""Honest verdicts: a target names its device, "measured" means measured on it, an override says
where it really ran, an estimate has no p99, and a re-targeted run reports only the new target."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from edgekd.config import TARGETS_DIR, TargetDevice, load_target
from edgekd.errors import BadInputError
from edgekd.verify.latency_budget import budget_verdict
from edgekd.measure.device import Gpu, Machine, matches, this_machine
from edgekd.measure.target_latency import target_latency
from edgekd.models import create_model
from edgekd.export.onnx_file import export_onnx
from tests.conftest import edgekd

XEON = Machine("x86_64", "Intel(R) Xeon(R) Processor", frozenset({"avx2", "avx512f", "avx512_vnni"}))
PHONE = Machine("aarch64", "0xd41 / 0xd05", frozenset({"asimd", "asimddp"}))
PI5 = Machine("aarch64", "0xd0b", frozenset({"asimd", "asimddp"}))  # Cortex-A76: not the phone target
H100 = Machine("x86_64", "AMD EPYC", frozenset({"avx2"}), "", (Gpu("NVIDIA H100 80GB HBM3", "9.0"),))
T4 = Machine("x86_64", "Intel Xeon", frozenset({"avx2"}), "", (Gpu("Tesla T4", "7.5"),))
AGX = Machine("aarch64", "0xd42", frozenset(), "NVIDIA Jetson AGX Orin Developer Kit", (Gpu("Orin", "8.7"),))
NANO = Machine("aarch64", "0xd42", frozenset(), "NVIDIA Jetson Orin Nano Developer Kit", (Gpu("Orin", "8.7"),))


def _device(target: str) -> TargetDevice:
    return load_target(target).device


@pytest.mark.parametrize("target, machine, expected", [
    ("host-cpu", XEON, True), ("host-cpu", PHONE, True),
    ("mobile-cpu", PHONE, True), ("mobile-cpu", XEON, False), ("mobile-cpu", PI5, False),
    ("server-gpu", T4, True), ("server-gpu", H100, False), ("server-gpu", XEON, False),
    ("jetson-orin-nano", NANO, True), ("jetson-orin-nano", AGX, False), ("jetson-agx-orin", AGX, True),
])
def test_a_target_is_measured_only_on_its_own_device(target, machine, expected):
    ok, why = matches(_device(target), machine)
    assert ok is expected
    assert (why == "") is expected


def test_mismatch_reasons_name_what_differs():
    assert "is aarch64; this machine is x86_64" in matches(_device("mobile-cpu"), XEON)[1]
    assert "'0xd41'" in matches(_device("mobile-cpu"), PI5)[1]
    assert "NVIDIA H100 80GB HBM3 (sm 9.0)" in matches(_device("server-gpu"), H100)[1]
    assert "'Jetson Orin Nano'" in matches(_device("jetson-orin-nano"), AGX)[1]


@pytest.mark.parametrize("table, message", [
    ('kind = "cpu"\nname = "x"\ncpu_flags = ["avx2"]', "kind 'cpu' needs arch"),
    ('kind = "cpu"\nname = "x"\narch = "x86_64"', "kind 'cpu' needs arch and cpu_flags or cpu_model"),
    ('kind = "gpu"\nname = "x"', "kind 'gpu' needs gpu_name or compute_capability"),
    ('kind = "this-machine"\ngpu_name = ["T4"]', "kind 'this-machine' takes no gpu_name"),
    ('kind = "gpu"\nname = "x"\ncompute_capability = ["sm87"]', "compute_capability"),
    ('kind = "laptop"', "device.kind"),
])
def test_device_tables_are_validated(tmp_path, table, message):
    text = (TARGETS_DIR / "host-cpu.toml").read_text().replace('kind = "this-machine"', table)
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(BadInputError, match=message):
        load_target(str(path))


@pytest.fixture(scope="module")
def small_onnx(test_images, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5).eval()
    return export_onnx(model, test_images[:8], tmp_path_factory.mktemp("verdict") / "student.onnx")


def _cpu_target(tmp_path: Path, flags: list[str]) -> str:
    """host-cpu's figures, but a `kind = "cpu"` device of this machine's architecture with `flags`."""
    table = (f'kind = "cpu"\nname = "a CPU with {" ".join(flags)}"\narch = "{this_machine().arch}"\n'
             f"cpu_flags = {json.dumps(flags)}")
    text = (TARGETS_DIR / "host-cpu.toml").read_text().replace('kind = "this-machine"', table)
    path = tmp_path / "cpu-target.toml"
    path.write_text(text.replace('name = "host-cpu"', 'name = "cpu-target"'))
    return str(path)


FAST = {"batch": 1}


def test_a_matching_cpu_device_is_measured_and_a_mismatching_one_estimated(small_onnx, tmp_path):
    own_flag = sorted(this_machine().cpu_flags)[0]
    here = target_latency(small_onnx, load_target(_cpu_target(tmp_path, [own_flag])), **FAST)
    assert here.latency.source == "measured" and here.on_target and here.note == ""
    elsewhere = target_latency(small_onnx, load_target(_cpu_target(tmp_path, [own_flag, "no_such_isa"])), **FAST)
    assert elsewhere.latency.source == "estimated" and not elsewhere.on_target
    assert "lacks them" in elsewhere.note and "no_such_isa" in elsewhere.note and "--measure-here" in elsewhere.note


def test_measure_here_is_labelled_as_not_the_target_device(small_onnx):
    mobile = load_target("mobile-cpu")
    plain = target_latency(small_onnx, mobile, **FAST)
    assert plain.latency.source == "estimated" and "not the target's device" in plain.note
    forced = target_latency(small_onnx, mobile, measure_here=True, **FAST)
    assert forced.latency.source == "measured" and not forced.on_target
    from edgekd.runtimes import usable_cpus

    threads = min(mobile.threads, usable_cpus())  # never more threads than this machine has CPUs
    fewer = f", with {threads} threads (the target's 4 exceed this machine's CPUs)" if threads < 4 else ""
    assert forced.note == f"measured on {this_machine().label}, not on Arm Cortex-A78 class phone CPU{fewer}"
    assert f"({threads} threads" in forced.latency.runtime
    verdict = budget_verdict(mobile, forced.latency.as_dict(), small_onnx.stat().st_size, forced.note)
    assert verdict["verdict"].endswith(f"; {forced.note}") and verdict["on_target"] is False


def test_bench_measure_here_says_where_it_ran(small_onnx):
    done = edgekd("bench", str(small_onnx), "--target", "mobile-cpu", "--measure-here")
    assert done.returncode in (0, 3, 6), done.stderr
    assert "not on Arm Cortex-A78 class phone CPU" in done.stdout.replace("\n", " ")
    plain = edgekd("bench", str(small_onnx), "--target", "mobile-cpu")
    assert "estimated" in plain.stdout and "not on Arm" not in plain.stdout


def test_an_estimate_has_no_p99_and_the_p99_check_says_not_estimated(small_onnx):
    mobile = load_target("mobile-cpu")
    estimate = target_latency(small_onnx, mobile, **FAST).latency
    assert estimate.source == "estimated" and estimate.p50 > 0
    assert estimate.p90 is None and estimate.p99 is None
    verdict = budget_verdict(mobile, estimate.as_dict(), small_onnx.stat().st_size)
    assert "p99" not in verdict["checks"] and verdict["not_estimated"] == ["p99"]
    assert "p99 not estimated (limit 10.000 ms)" in verdict["verdict"]
    assert set(verdict["checks"]) == {"p50", "memory"}


def test_a_host_cpu_run_retargeted_to_mobile_reports_only_mobile_estimates(smoke_run, cache_dir, tmp_path):
    source, _, _ = smoke_run
    run_dir = tmp_path / "retargeted"
    shutil.copytree(source, run_dir)
    done = edgekd("compress", "--resume", str(run_dir), "--target", "mobile-cpu", "--cache-dir", str(cache_dir))
    assert done.returncode in (0, 3, 6), done.stderr[-2000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["target"]["name"] == "mobile-cpu" and report["target"]["on_device"] is False
    for stage in report["stages"]:
        assert stage["resumed"] is True, f"{stage['name']} retrained; the quantization scheme did not change"
        latency = stage["latency_ms"]
        assert latency["source"] == "estimated" and "mobile-cpu" in latency["runtime"]
        assert latency["p99"] is None and stage["latency_estimate_ms"]["runtime"] == latency["runtime"]
        assert "not the target's device" in stage["latency_note"]
    assert report["budget"]["source"] == "estimated" and report["budget"]["verdict"].startswith(
        ("MET on mobile-cpu", "MISSED on mobile-cpu"))
    stages = json.dumps(report["stages"])  # no host timing left from the first run
    assert '"source": "measured"' not in stages and "host-cpu" not in stages
    assert "measured" not in report["budget"]["verdict"]
