"""Bad input gets one clear line and a non-zero exit, never a traceback, and never a run folder
that looks complete. Each case is a real command line run against real (broken) files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from edgekd.cli import run
from edgekd.config import PROFILES_DIR, TARGETS_DIR
from edgekd.models import create_model

BAD_INPUT, ENVIRONMENT = 2, 5


def _png(path: Path, value: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)


def _edited(source: Path, dest: Path, old: str, new: str) -> str:
    text = source.read_text()
    assert old in text, f"{old!r} not in {source}"
    dest.write_text(text.replace(old, new, 1))
    return str(dest)


def _target(tmp: Path, old: str, new: str) -> str:
    return _edited(TARGETS_DIR / "host-cpu.toml", tmp / "target.toml", old, new)


def _profile(tmp: Path, old: str, new: str) -> str:
    return _edited(PROFILES_DIR / "smoke.toml", tmp / "profile.toml", old, new)


def _no_images(tmp: Path) -> list[str]:
    (tmp / "data" / "a").mkdir(parents=True)
    (tmp / "data" / "b").mkdir(parents=True)
    return ["compress", "--data", str(tmp / "data")]


def _one_class(tmp: Path) -> list[str]:
    for i in range(4):
        _png(tmp / "data" / "only" / f"{i}.png", i)
    return ["compress", "--data", str(tmp / "data")]


def _unreadable_image(tmp: Path) -> list[str]:
    for cls in ("a", "b"):
        for i in range(3):
            _png(tmp / "data" / cls / f"{i}.png", i)
    (tmp / "data" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return ["compress", "--data", str(tmp / "data")]


def _checkpoint(tmp: Path, cut: bool) -> list[str]:
    path = tmp / "teacher.pt"
    torch.save(create_model("edgekd_cnn", 10, (1, 28, 28)).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if cut else b"\x00garbage" * 100)
    return ["compress", "--teacher", str(path), "--teacher-arch", "edgekd_cnn"]


def _other_architecture(tmp: Path) -> list[str]:
    path = tmp / "teacher.pt"
    torch.save(create_model("edgekd_resnet18", 10, (1, 28, 28), 0.25).state_dict(), path)
    return ["compress", "--teacher", str(path), "--teacher-arch", "edgekd_cnn"]


def _not_onnx(tmp: Path) -> list[str]:
    (tmp / "model.onnx").write_text("this is not a protobuf")
    return ["bench", str(tmp / "model.onnx")]


def _file_in_the_way(tmp: Path) -> list[str]:
    (tmp / "file").write_text("")
    return ["compress", "--run-dir", str(tmp / "file" / "run")]


CASES = {
    # case: (argv builder, expected exit code, what the message must say)
    "missing data folder": (lambda t: ["compress", "--data", str(t / "nope")], BAD_INPUT, "data folder not found"),
    "data folder with no images": (_no_images, BAD_INPUT, "no images found"),
    "data folder with one class": (_one_class, BAD_INPUT, "at least 2"),
    "unreadable image file": (_unreadable_image, BAD_INPUT, "unreadable image"),
    "unknown target": (lambda t: ["compress", "--target", "jetson-nope"], BAD_INPUT, "unknown target 'jetson-nope'"),
    "unknown profile": (lambda t: ["compress", "--profile", "turbo"], BAD_INPUT, "unknown profile 'turbo'"),
    "target file missing": (lambda t: ["compress", "--target", str(t / "x.toml")], BAD_INPUT, "target file not found"),
    "target: unknown key": (lambda t: ["compress", "--target", _target(t, "threads = 2", "threads = 2\nturbo = true")],
                            BAD_INPUT, "field 'turbo': unknown field"),
    "target: missing field": (lambda t: ["compress", "--target", _target(t, 'runtime = "onnxruntime-cpu"', "")],
                              BAD_INPUT, "field 'runtime': missing required field"),
    "target: wrong type": (lambda t: ["compress", "--target", _target(t, "threads = 2", 'threads = "two"')],
                           BAD_INPUT, "field 'threads'"),
    "target: negative budget": (lambda t: ["compress", "--target", _target(t, "latency_p50_ms = 1.0", "latency_p50_ms = -1.0")],
                                BAD_INPUT, "field 'budget.latency_p50_ms'"),
    "target: not TOML": (lambda t: ["compress", "--target", _target(t, "[budget]", "[budget")], BAD_INPUT, "not valid TOML"),
    "profile: temperature <= 0": (lambda t: ["compress", "--profile", _profile(t, "temperature = 4.0", "temperature = 0.0")],
                                  BAD_INPUT, "field 'distill.temperature'"),
    "profile: pruning ratio >= 1": (lambda t: ["compress", "--profile", _profile(t, "ratio = 0.5", "ratio = 1.0")],
                                    BAD_INPUT, "field 'prune.ratio'"),
    "profile: alpha > 1": (lambda t: ["compress", "--profile", _profile(t, "alpha = 0.9", "alpha = 1.5")],
                           BAD_INPUT, "field 'distill.alpha'"),
    "profile: unknown key": (lambda t: ["compress", "--profile", _profile(t, "[distill]", "[distill]\ntemprature = 3.0")],
                             BAD_INPUT, "field 'distill.temprature': unknown field"),
    "profile: wrong type": (lambda t: ["compress", "--profile", _profile(t, "epochs = 2\nlr = 0.2\ntemperature", 'epochs = "many"\nlr = 0.2\ntemperature')],
                            BAD_INPUT, "field 'distill.epochs'"),
    "truncated checkpoint": (lambda t: _checkpoint(t, cut=True), BAD_INPUT, "not a readable PyTorch checkpoint"),
    "corrupt checkpoint": (lambda t: _checkpoint(t, cut=False), BAD_INPUT, "not a readable PyTorch checkpoint"),
    "checkpoint of another architecture": (_other_architecture, BAD_INPUT, "does not fit the architecture"),
    "teacher neither file nor name": (lambda t: ["compress", "--teacher", str(t / "gone.pt")], BAD_INPUT,
                                      "neither a file nor an architecture"),
    "unknown student architecture": (lambda t: ["compress", "--student", "vgg99"], BAD_INPUT, "unknown architecture 'vgg99'"),
    "student width out of range": (lambda t: ["compress", "--width", "0"], BAD_INPUT, "--width"),
    "an ONNX file that is not ONNX": (_not_onnx, BAD_INPUT, "not an ONNX model"),
    "resume a folder that is no run": (lambda t: ["compress", "--resume", str(t)], BAD_INPUT, "not an edgekd run folder"),
    "check: report missing": (lambda t: ["check", str(t / "r.json"), "--baseline", str(t / "b.json")], BAD_INPUT,
                              "report not found"),
    "unwritable run folder": (_file_in_the_way, ENVIRONMENT, "cannot write"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_line_and_an_exit_code(case, tmp_path, capsys, cache_dir, monkeypatch):
    build, code, message = CASES[case]
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("EDGEKD_QUIET", "1")
    monkeypatch.chdir(tmp_path)
    argv = build(tmp_path)
    if argv[0] == "compress" and "--profile" not in argv:
        argv += ["--profile", "smoke"]
    if argv[0] == "compress" and "--target" not in argv:
        argv += ["--target", "host-cpu"]
    if argv[0] == "compress" and "--run-dir" not in argv and "--resume" not in argv:
        argv += ["--run-dir", str(tmp_path / "run")]
    assert run(argv) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("edgekd: error:") and message in err, err
    assert not list(tmp_path.rglob("report.json")), "a failed run must not leave a report"


def test_disk_full_is_reported_as_such_and_leaves_nothing_half_written(tmp_path, smoke_run, cache_dir):
    """A real full disk: a 96 KiB tmpfs as the run folder (needs root, skipped elsewhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True
    ).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        from tests.conftest import edgekd

        done = edgekd("compress", "--profile", "smoke", "--target", "host-cpu", "--run-dir", str(mount / "run"),
                      "--cache-dir", str(cache_dir))
        assert done.returncode == ENVIRONMENT, done.stderr
        assert "disk full" in done.stderr and "Traceback" not in done.stderr
        leftovers = [p.name for p in (mount / "run").rglob("*") if p.is_file()]
        assert "report.json" not in leftovers
        assert not any(name.endswith((".tmp", ".partial")) for name in leftovers), leftovers
        assert not list((mount / "run").glob("stages/*.done.json"))
    finally:
        subprocess.run(["umount", str(mount)], check=False)
