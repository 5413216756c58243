"""What users' tools see: listings that fit 80 columns with every name whole (in a pipe and on a
terminal), JSON that parses, the mobile ORT file, `edgekd report` and `edgekd --version`."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import edgekd
from edgekd.config import list_profiles, list_targets, load_profile, load_target
from edgekd.measure.target_latency import measurable_here

from .conftest import REPO, edgekd as run_edgekd

BOX_DRAWING = {chr(c) for c in range(0x2500, 0x2580)}
TARGET_NAMES = [t.name for t in list_targets()] + [a for t in list_targets() for a in t.aliases]
PROFILE_NAMES = [p.name for p in list_profiles()]
LISTINGS = {"targets": TARGET_NAMES, "profiles": PROFILE_NAMES}


def _words(text: str) -> set[str]:
    return {word for line in text.splitlines() for word in line.split()}


def _in_terminal(*args: str, columns: int = 80) -> str:
    """Run `edgekd ARGS` with stdout on a pseudo-terminal `columns` wide, as a user's shell would."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "EDGEKD_QUIET": "1", "TERM": "xterm", "NO_COLOR": "1"}
    env.pop("COLUMNS", None)
    done = subprocess.run([sys.executable, "-m", "edgekd", *args], stdout=follower, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, cwd=REPO, env=env, timeout=120)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the follower is closed and everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert done.returncode == 0, done.stderr
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # bold header: what the eye sees is the text without escapes


@pytest.mark.parametrize("kind", LISTINGS)
def test_listing_in_a_pipe_is_plain_fits_80_columns_and_keeps_names_whole(kind):
    done = run_edgekd(kind, "list", env={"COLUMNS": "80"})  # captured: stdout is a pipe
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, done.stdout
    assert not BOX_DRAWING & set(done.stdout), done.stdout
    assert "\x1b" not in done.stdout  # no colour codes either
    assert all(line == line.rstrip() for line in lines)
    missing = [name for name in LISTINGS[kind] if name not in _words(done.stdout)]
    assert not missing, f"cut or absent: {missing}\n{done.stdout}"
    # a header, then one row per entry starting with its name: what `grep` and `awk '{print $1}'` rely on
    names = [t.name for t in list_targets()] if kind == "targets" else PROFILE_NAMES
    assert [line.split()[0] for line in lines[1:1 + len(names)]] == names


@pytest.mark.parametrize("kind", LISTINGS)
def test_listing_on_an_80_column_terminal_keeps_names_whole(kind):
    text = _in_terminal(kind, "list")
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "─" in text  # the header rule a terminal gets
    missing = [name for name in LISTINGS[kind] if name not in _words(text)]
    assert not missing, f"cut or absent: {missing}\n{text}"


def test_box_on_request_in_a_pipe_and_plain_on_request_on_a_terminal():
    boxed = run_edgekd("targets", "list", "--box", env={"COLUMNS": "80"})
    assert boxed.returncode == 0 and "─" in boxed.stdout
    assert max(len(line) for line in boxed.stdout.splitlines()) <= 80
    assert not BOX_DRAWING & set(_in_terminal("targets", "list", "--no-box"))


def test_listing_shows_budgets_and_sends_the_long_cells_to_show():
    listed = run_edgekd("targets", "list", env={"COLUMNS": "80"}).stdout
    row = next(line for line in listed.splitlines() if line.startswith("jetson-orin-nano "))
    assert row.split()[-1] == "estimated" and "2 / 4" in row and "64 MB" in row
    why = measurable_here(load_target("jetson-orin-nano"))[1]
    assert why and why[:30] not in listed  # the reason lives in `show`
    shown = run_edgekd("targets", "show", "jetson-orin-nano", env={"COLUMNS": "200"}).stdout
    assert f"latency_note: {why}" in shown.splitlines()
    profiles = run_edgekd("profiles", "list", env={"COLUMNS": "80"}).stdout
    assert load_profile("smoke").description not in profiles
    assert load_profile("smoke").description in run_edgekd("profiles", "show", "smoke").stdout


# ---------------------------------------------------------------- --json


def _json(*args: str, code: int = 0) -> object:
    done = run_edgekd(*args, "--json")
    assert done.returncode == code, done.stderr
    return json.loads(done.stdout)  # stdout holds the JSON and nothing else


def test_targets_json():
    listed = _json("targets", "list")
    assert [t["name"] for t in listed["targets"]] == [t.name for t in list_targets()]
    by_name = {t["name"]: t for t in listed["targets"]}
    assert by_name["host-cpu"]["latency_source"] == "measured"
    assert by_name["mobile-cpu"]["latency_source"] == "estimated"
    shown = _json("targets", "show", "jetson-orin")  # an alias shows its target
    assert shown == by_name["jetson-orin-nano"]
    assert shown["budget"]["latency_p50_ms"] == 2.0 and shown["activations"] == "symmetric-signed"
    assert shown["latency_note"] == measurable_here(load_target("jetson-orin-nano"))[1] != ""


def test_profiles_json():
    listed = _json("profiles", "list")
    assert [p["name"] for p in listed["profiles"]] == PROFILE_NAMES
    shown = _json("profiles", "show", "smoke")
    assert shown == next(p for p in listed["profiles"] if p["name"] == "smoke")
    assert shown["export"]["int8_atol"] == load_profile("smoke").export.int8_atol
    assert shown["distill"]["epochs"] == 2


def test_bench_json(smoke_run):
    run_dir, report, _ = smoke_run
    done = run_edgekd("bench", str(run_dir / "student.int8.onnx"), "--target", "mobile-cpu", "--json")
    result = json.loads(done.stdout)
    assert done.returncode == (0 if result["met"] else 3)  # exit codes as without --json
    assert result["target"] == "mobile-cpu" and result["batch"] == 1
    assert result["latency_ms"]["source"] == "estimated" and result["latency_note"]
    assert result["budget"]["met"] == result["met"] and result["budget"]["verdict"].startswith(("MET", "MISSED"))


def test_check_json(smoke_run, tmp_path):
    run_dir, report, _ = smoke_run
    result = _json("check", str(run_dir / "report.json"), "--baseline", str(run_dir / "report.json"))
    assert result["ok"] is True and result["latency"]["change"] == 0.0
    assert result["accuracy"]["current"] == report["stages"][-1]["accuracy"]
    slower = json.loads((run_dir / "report.json").read_text())
    slower["reference"]["normalised_latency"] *= 2
    (tmp_path / "slower.json").write_text(json.dumps(slower))
    failed = _json("check", str(tmp_path / "slower.json"), "--baseline", str(run_dir / "report.json"), code=4)
    assert failed["ok"] is False and failed["latency"]["ok"] is False and failed["accuracy"]["ok"] is True
    assert failed["latency"]["change"] == pytest.approx(1.0)


def test_json_error_leaves_stdout_empty():
    done = run_edgekd("targets", "show", "jetson-nope", "--json")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("edgekd: error: unknown target 'jetson-nope'") and done.stderr.count("\n") == 1


# ---------------------------------------------------------------- compress's table


def test_compress_table_in_a_pipe_fits_80_columns(smoke_run):
    _, report, done = smoke_run  # conftest captured `edgekd compress` through a pipe
    lines = done.stdout.splitlines()
    assert lines[0] == "edgekd: smoke profile -> host-cpu"  # stdout is the result alone: no library's progress
    verdicts = [line for line in lines if line.startswith(("MET on", "MISSED on", "accuracy MET", "accuracy MISSED",
                                                           "accuracy NOT SHOWN", "against the teacher:"))]
    assert len(verdicts) == 3  # one line each, never wrapped: CI logs grep them
    assert max(len(line) for line in lines if line not in verdicts) <= 80, done.stdout
    assert not BOX_DRAWING & set(done.stdout), done.stdout
    rows = [line.split() for line in lines if line.split() and line.split()[0].rstrip("*") in
            {s["name"] for s in report["stages"]}]
    assert [row[0].rstrip("*") for row in rows] == [s["name"] for s in report["stages"]]
    assert all(row[-1] == "measured" for row in rows)  # host-cpu: measured, the word whole


# ---------------------------------------------------------------- the mobile file


@pytest.fixture(scope="module")
def mobile_run(tmp_path_factory, cache_dir, smoke_run) -> tuple[Path, dict]:
    """The session's smoke run re-judged for mobile-cpu (`--resume --target`): its stages are the
    host run's (the same quantization scheme, tests/test_verdict.py), and the export for the new
    target (the ORT file among it) is made as a fresh mobile run makes it, without training again."""
    run_dir = tmp_path_factory.mktemp("runs") / "smoke-mobile"
    shutil.copytree(smoke_run[0], run_dir)
    done = run_edgekd("compress", "--resume", str(run_dir), "--target", "mobile-cpu", "--cache-dir", str(cache_dir))
    assert done.returncode in (0, 3, 6), done.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["target"]["name"] == "mobile-cpu" and all(s["resumed"] for s in report["stages"])
    return run_dir, report


def test_mobile_run_writes_an_ort_file_that_agrees_with_the_onnx_student(mobile_run, test_images):
    import onnxruntime as ort

    run_dir, report = mobile_run
    assert report["artifacts"]["student_int8_ort"] == "student.int8.ort"
    path = run_dir / "student.int8.ort"
    assert path.read_bytes()[4:8] == b"ORTM"  # the ORT format's FlatBuffers identifier, not an ONNX protobuf
    record = report["ort_format"]
    assert record["file"] == "student.int8.ort" and record["parity"]["top1_agreement"] == 1.0
    assert "QLinearConv" in (run_dir / record["ops_config"]).read_text()  # INT8 kernels, for a reduced build

    images = test_images.numpy()
    ort_session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_session = ort.InferenceSession(str(run_dir / report["artifacts"]["student_int8_onnx"]),
                                        providers=["CPUExecutionProvider"])
    from_ort = ort_session.run(None, {ort_session.get_inputs()[0].name: images})[0]
    from_onnx = onnx_session.run(None, {onnx_session.get_inputs()[0].name: images})[0]
    assert (from_ort.argmax(1) == from_onnx.argmax(1)).all()
    assert np.abs(from_ort - from_onnx).max() <= load_profile("smoke").export.int8_atol


def test_only_mobile_targets_get_an_ort_file(smoke_run):
    run_dir, report, _ = smoke_run  # host-cpu: ONNX Runtime, but not an Arm device
    assert report["artifacts"]["student_int8_ort"] is None and report["ort_format"] is None
    assert not (run_dir / "student.int8.ort").exists()


# ---------------------------------------------------------------- edgekd report, --version


def test_report_rerenders_html_and_plots(smoke_run, tmp_path):
    source, report, _ = smoke_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    for name in ("report.html", "accuracy_latency.png", "layers.png"):
        (run_dir / name).unlink()
    done = run_edgekd("report", str(run_dir))
    assert done.returncode == 0, done.stderr
    page = (run_dir / "report.html").read_text()
    assert report["budget"]["verdict"].split(":")[0] in page
    assert all(stage["name"] in page for stage in report["stages"])
    assert (run_dir / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "accuracy_latency.png").stat().st_size > 0


@pytest.mark.parametrize("content", [None, "{not json", '{"stages": []}', '{"stages": [{"name": "x"}]}'],
                         ids=["no-report", "not-json", "no-stages", "not-a-report"])
def test_report_on_a_folder_without_a_readable_report_is_one_line(tmp_path, content):
    if content is not None:
        (tmp_path / "report.json").write_text(content)
    done = run_edgekd("report", str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("edgekd: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "report.html").exists()


def test_version():
    done = run_edgekd("--version")
    assert done.returncode == 0
    assert done.stdout == f"edgekd {edgekd.__version__}\n"
    assert edgekd.__version__ == metadata.version("edgekd")
