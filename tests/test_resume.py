"""A run killed mid-stage (a real SIGKILL to a real process) resumes: completed stages are not
rerun, the interrupted stage restarts from its last epoch, and the final report is whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgekd.config import PROFILES_DIR
from tests.conftest import REPO, edgekd


def _slow_smoke_profile(tmp: Path) -> Path:
    text = (PROFILES_DIR / "smoke.toml").read_text()
    text = text.replace('name = "smoke"', 'name = "resume-test"').replace("epochs = 2\nlr = 0.2\ntemperature", "epochs = 4\nlr = 0.2\ntemperature")
    path = tmp / "resume-test.toml"
    path.write_text(text)
    return path


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"run ended before {path.name} appeared: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_killed_run_resumes_without_redoing_finished_work(tmp_path, cache_dir, smoke_run):
    profile = _slow_smoke_profile(tmp_path)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "edgekd", "compress", "--profile", str(profile), "--target", "host-cpu",
               "--run-dir", str(run_dir), "--cache-dir", str(cache_dir)]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "EDGEKD_QUIET": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(run_dir / "progress" / "distill.pt", process)  # distillation epoch 1 of 4 saved
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    teacher_marker = run_dir / "stages" / "teacher.done.json"
    assert teacher_marker.is_file() and not (run_dir / "report.json").exists()
    assert not (run_dir / "stages" / "distill.done.json").exists()
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob("*.partial"))
    marker_before = teacher_marker.stat().st_mtime_ns

    done = edgekd("compress", "--resume", str(run_dir), "--cache-dir", str(cache_dir))
    assert done.returncode in (0, 3, 6), done.stderr[-2000:]
    report = json.loads((run_dir / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["teacher", "distill", "prune", "quantize"]
    assert stages["teacher"]["resumed"] is True
    assert teacher_marker.stat().st_mtime_ns == marker_before, "a completed stage was rerun"
    assert 1 <= stages["distill"]["details"]["resumed_from_epoch"] < 4
    assert len(stages["distill"]["details"]["epoch_losses"]) == 4
    assert report["profile"] == "resume-test" and (run_dir / "student.int8.onnx").is_file()
    assert not (run_dir / "progress" / "distill.pt").exists()


def test_resume_of_a_finished_run_reruns_only_what_the_profile_changed(tmp_path, smoke_run, cache_dir):
    run_dir, report, _ = smoke_run
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(run_dir), str(copy)], check=True)
    profile = tmp_path / "more-pruning.toml"
    profile.write_text((PROFILES_DIR / "smoke.toml").read_text().replace("ratio = 0.5", "ratio = 0.75"))
    done = edgekd("compress", "--resume", str(copy), "--profile", str(profile), "--cache-dir", str(cache_dir))
    assert done.returncode in (0, 3, 6), done.stderr[-2000:]
    stages = {s["name"]: s for s in json.loads((copy / "report.json").read_text())["stages"]}
    assert stages["teacher"]["resumed"] and stages["distill"]["resumed"]
    assert not stages["prune"]["resumed"] and not stages["quantize"]["resumed"]
    assert stages["prune"]["params"] < {s["name"]: s for s in report["stages"]}["prune"]["params"]


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path, cache_dir, smoke_run):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "edgekd", "compress", "--profile", str(_slow_smoke_profile(tmp_path)),
               "--target", "host-cpu", "--run-dir", str(run_dir), "--cache-dir", str(cache_dir)]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "EDGEKD_QUIET": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(run_dir / "progress" / "distill.pt", process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err and f"edgekd compress --resume {run_dir}" in err
    assert (run_dir / "progress" / "distill.pt").is_file(), "the last epoch checkpoint is kept"
    assert not (run_dir / "report.json").exists()
