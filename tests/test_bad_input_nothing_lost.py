"""Hostile input, round 2 (issue 15): nothing lost, nothing silently wrong.

Each case is a real command line run against real (broken) files. It must exit with the stated
code, print one line (no traceback), and leave every file that existed before it byte-identical:
no user's file, earlier run, cache entry or report is lost or changed. Most cases fail before any
training; the few that train use a tiny image folder and one-epoch, tiny-model profiles."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgekd.cli import run
from edgekd.config import PROFILES_DIR, TARGETS_DIR, load_profile
from edgekd.models import ModelSpec, create_model, save_checkpoint
from edgekd.runfolder import LOCK, OWNER, claim
from tests.conftest import REPO

BAD_INPUT, ENVIRONMENT = 2, 5
SIZE = 8  # --image-size of the tiny data: the teachers below are built for 1x8x8 images

TINY = """name = "tiny"
description = "tests: a tiny image folder, tiny models, one epoch"
seed = 0
[data]
batch_size = {batch_size}
[teacher]
arch = "edgekd_cnn"
width = 0.25
epochs = 1
min_steps = 0
[student]
arch = "edgekd_cnn"
width = 0.25
[distill]
epochs = {epochs}
lr = {lr}
min_steps = 0
[prune]
enabled = false
[quantize]
enabled = false
"""


# ---------------------------------------------------------------- files a hostile user hands us


def _png(path: Path, value: int = 0, mode: str = "L", size: int = 8) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value).save(path)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A few hundred bytes whose header claims width x height grey pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def _png_broken_inside(path: Path) -> Path:
    """Valid chunks and checksums (so its header checks out) around compressed data that is garbage."""
    header = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"\x78\x9c garbage, not deflate")
                     + _chunk(b"IEND", b""))
    return path


def _data(tmp: Path, per_class: int = 12) -> Path:
    root = tmp / "data"
    for label, cls in enumerate(("a", "b")):
        for i in range(per_class):
            _png(root / cls / f"{i}.png", 40 + 150 * label + i)
    return root


def _profile(tmp: Path, lr: float = 0.1, epochs: int = 1, batch_size: int = 8, **data: int) -> str:
    text = TINY.format(lr=lr, epochs=epochs, batch_size=batch_size)
    for key, value in data.items():
        text = text.replace("[data]\n", f"[data]\n{key} = {value}\n")
    path = tmp / f"tiny-{lr:g}-{epochs}-{batch_size}-{len(data)}.toml"
    path.write_text(text)
    return str(path)


def _teacher(tmp: Path, classes: int = 2, shape=(1, SIZE, SIZE), name: str = "teacher.pt") -> Path:
    spec = ModelSpec("edgekd_cnn", classes, tuple(shape), 0.25)
    torch.manual_seed(0)
    save_checkpoint(spec.build(), spec, tmp / name)
    return tmp / name


def _scripted(tmp: Path, model: torch.nn.Module) -> Path:
    torch.jit.script(model.eval()).save(str(tmp / "teacher.ts"))
    return tmp / "teacher.ts"


def _exported(tmp: Path, shape=(1, SIZE, SIZE), dynamic_batch: bool = True) -> Path:
    model = create_model("edgekd_cnn", 2, shape, 0.25).eval()
    dims = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
    torch.export.save(torch.export.export(model, (torch.zeros(2, *shape),), dynamic_shapes=dims), str(tmp / "t.pt2"))
    return tmp / "t.pt2"


class _Features(torch.nn.Module):  # a "teacher" that returns feature maps, not logits
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.conv(x)


def _compress(tmp: Path, *extra: str, teacher: Path | None = None) -> list[str]:
    argv = ["compress", "--data", str(_data(tmp)), "--image-size", str(SIZE), "--target", "host-cpu"]
    if "--profile" not in extra:
        argv += ["--profile", _profile(tmp)]
    return argv + (["--teacher", str(teacher or _teacher(tmp))] if "--teacher" not in extra else []) + list(extra)


def _earlier_run(tmp: Path) -> Path:
    """What a finished edgekd run leaves: its id, a completed stage, a report."""
    folder = tmp / "run"
    (folder / "stages").mkdir(parents=True)
    (folder / OWNER).write_text(json.dumps({"run_id": "0123", "created": "2026-01-01T00:00:00+00:00"}))
    (folder / "stages" / "distill.done.json").write_text("{}")
    (folder / "report.json").write_text(json.dumps({"status": "complete"}))
    (folder / "options.json").write_text(json.dumps({"profile": "smoke"}))
    return folder


def _onnx(tmp: Path, inputs: list, name: str = "m.onnx") -> Path:
    """A one-node graph (Identity or Add) over the given inputs: enough to be a valid ONNX file."""
    names = [i.name for i in inputs]
    node = helper.make_node("Add" if len(inputs) == 2 else "Identity", names, ["y"])
    out = helper.make_tensor_value_info("y", inputs[0].type.tensor_type.elem_type, None)
    model = helper.make_model(helper.make_graph([node], "g", inputs, [out]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp / name))
    return tmp / name


def _float_input(name: str, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _dynamic_hw(tmp: Path) -> Path:
    model = create_model("edgekd_cnn", 10, (1, 28, 28), 0.25).eval()
    path = tmp / "dyn.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}}, opset_version=17, dynamo=False)
    return path


def _target(tmp: Path, encoding: str) -> str:
    path = tmp / "target.toml"
    path.write_bytes(("# Zürich office's box\n" + (TARGETS_DIR / "host-cpu.toml").read_text()).encode(encoding))
    return str(path)


def _locked_by_another(tmp: Path) -> Path:
    """Another process's run in `tmp/run`: its lock held (on another open file, as a process would)."""
    folder = tmp / "run"
    folder.mkdir()
    (folder / OWNER).write_text(json.dumps({"run_id": "f00d"}))
    handle = open(folder / LOCK, "w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write(json.dumps({"pid": 4242, "host": "build-box", "started": "2026-11-23T12:00:00+00:00"}))
    handle.flush()
    _HELD.append(handle)
    return folder


_HELD: list = []  # open lock files; closed after each test


def _cache_corrupt(tmp: Path, checksum: bool) -> list[str]:
    from edgekd.data import load_data
    from edgekd.stages.teacher import cache_entry

    profile = _profile(tmp)
    data = load_data(str(_data(tmp)), load_profile(profile).data, SIZE, 0)
    entry = cache_entry(load_profile(profile), data, tmp / "cache")
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"PK\x03\x04 half a checkpoint")
    if checksum:
        entry.with_name(entry.name + ".sha256").write_text("0" * 64 + "\n")
    return ["compress", "--data", str(tmp / "data"), "--image-size", str(SIZE), "--target", "host-cpu",
            "--profile", profile, "--cache-dir", str(tmp / "cache")]


def _interrupted_run(tmp: Path) -> list[str]:
    """A run folder whose distillation epoch checkpoint was cut short (a disk fault): resume it."""
    folder = tmp / "run"
    (folder / "progress").mkdir(parents=True)
    options = {"target": "host-cpu", "profile": _profile(tmp, epochs=2), "data": str(_data(tmp)), "image_size": SIZE,
               "teacher": str(_teacher(tmp)), "teacher_arch": None, "teacher_weights": None, "student": None,
               "width": None, "seed": None}
    (folder / "options.json").write_text(json.dumps(options))
    (folder / OWNER).write_text(json.dumps({"run_id": "beef"}))
    torch.save({"epoch": 0, "trainable": create_model("edgekd_cnn", 2, (1, SIZE, SIZE), 0.25).state_dict()},
               folder / "progress" / "distill.pt")
    blob = (folder / "progress" / "distill.pt").read_bytes()
    (folder / "progress" / "distill.pt").write_bytes(blob[: len(blob) // 3])
    return ["compress", "--resume", str(folder)]


def _report(tmp: Path, status: str | None, encoding: str = "utf-8") -> list[str]:
    body = json.loads((REPO / "tests/baselines/smoke-host-cpu.json").read_text())
    body.pop("status", None)
    if status is not None:
        body["status"] = status
    (tmp / "report.json").write_bytes(json.dumps({"note": "Zürich", **body}).encode(encoding))
    return ["check", str(tmp / "report.json"), "--baseline", str(REPO / "tests/baselines/smoke-host-cpu.json")]


def _compress_with(tmp: Path, make) -> list[str]:
    argv = _compress(tmp)
    make(tmp / "data")
    return argv


def _worker_error(tmp: Path) -> list[str]:
    """The built-in teacher trains with a data-loader worker; the file breaks only when decoded there
    (train/ + val/, and batches that cover every training image, so the worker is sure to read it)."""
    _data(tmp / "split" / "train", per_class=4)
    _data(tmp / "split" / "val", per_class=2)
    _png_broken_inside(tmp / "split" / "train" / "data" / "b" / "zz.png")
    for split in ("train", "val"):
        (tmp / "split" / split / "data").rename(tmp / "split" / f"{split}-tree")
        (tmp / "split" / f"{split}-tree").rename(tmp / "split" / split / "tree")
        for cls in ("a", "b"):
            (tmp / "split" / split / "tree" / cls).rename(tmp / "split" / split / cls)
        (tmp / "split" / split / "tree").rmdir()  # left empty, it was a third class with no images (issue 29)
    return ["compress", "--data", str(tmp / "split"), "--image-size", str(SIZE), "--target", "host-cpu",
            "--profile", _profile(tmp, workers=1, batch_size=3), "--cache-dir", str(tmp / "cache")]


def _resume_busy(tmp: Path) -> list[str]:
    _locked_by_another(tmp)
    return ["compress", "--resume", str(_earlier_run_opts(tmp))]


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _text(path: Path) -> Path:
    path.write_text("not a protobuf at all")
    return path


def _empty_graph(tmp: Path) -> Path:
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [])), str(tmp / "m.onnx"))
    return tmp / "m.onnx"


def _latin1_options(tmp: Path) -> Path:
    folder = tmp / "run"
    folder.mkdir()
    (folder / OWNER).write_text(json.dumps({"run_id": "cafe"}))
    (folder / "options.json").write_bytes('{"profile": "Zürich"}'.encode("latin-1"))
    return folder


def _earlier_run_opts(tmp: Path) -> Path:
    (tmp / "run" / "options.json").write_text(json.dumps({"profile": "smoke", "target": "host-cpu",
                                                          "data": str(_data(tmp)), "image_size": SIZE}))
    return tmp / "run"


def _edited_smoke(tmp: Path, old: str, new: str) -> str:
    text = (PROFILES_DIR / "smoke.toml").read_text()
    assert old in text
    (tmp / "edited.toml").write_text(text.replace(old, new, 1))
    return str(tmp / "edited.toml")


CASES = {
    # case: (argv builder, exit code, what the one line must say, files a failed run may rewrite)
    # -- the run folder belongs to one run
    "run dir holds a user's files": (lambda t: _compress(t, "--run-dir", str(_png(t / "photos" / "cat.png").parent)),
                                     BAD_INPUT, "not empty and was not created by edgekd", ()),
    "run dir holds an earlier finished run": (lambda t: _compress(t, "--run-dir", str(_earlier_run(t))),
                                              BAD_INPUT, "holds an earlier edgekd run: continue it with --resume", ()),
    "run dir is a file": (lambda t: _compress(t, "--run-dir", str(_png(t / "x.png"))), BAD_INPUT, "is a file, not a folder", ()),
    "run dir locked by another run": (lambda t: _compress(t, "--run-dir", str(_locked_by_another(t))),
                                      BAD_INPUT, "in use by pid 4242 on build-box, started 2026-11-23T12:00:00", ()),
    "resume of a run that is still running": (_resume_busy, BAD_INPUT, "in use by pid 4242", ()),
    "resume of a truncated epoch checkpoint": (_interrupted_run, BAD_INPUT, "not a readable edgekd checkpoint",
                                               ("options.json", "config.json")),
    "resume of a user's folder": (lambda t: ["compress", "--resume", str(_png(t / "photos" / "cat.png").parent)],
                                  BAD_INPUT, "not an edgekd run folder", ()),
    # -- teachers are checked against the data when they are loaded
    "checkpoint teacher with other classes": (lambda t: _compress(t, teacher=_teacher(t, classes=10)),
                                              BAD_INPUT, "teacher has 10 classes, the data has 2", ()),
    "checkpoint teacher for other images": (lambda t: _compress(t, teacher=_teacher(t, shape=(1, 28, 28))),
                                            BAD_INPUT, "was built for 1x28x28 images, the data is 1x8x8", ()),
    "TorchScript teacher with other classes": (
        lambda t: _compress(t, "--trust-torchscript", teacher=_scripted(t, create_model("edgekd_cnn", 10, (1, SIZE, SIZE), 0.25))),
        BAD_INPUT, "has 10 outputs, the data has 2 classes", ()),
    "TorchScript teacher for colour images": (
        lambda t: _compress(t, "--trust-torchscript", teacher=_scripted(t, create_model("edgekd_cnn", 2, (3, SIZE, SIZE), 0.25))),
        BAD_INPUT, "does not take the data's images (a batch of (4, 1, 8, 8))", ()),
    "TorchScript teacher returning feature maps": (lambda t: _compress(t, "--trust-torchscript", teacher=_scripted(t, _Features())),
                                                   BAD_INPUT, "returns (4, 4, 6, 6) for a batch of 4", ()),
    "torch.export teacher with a fixed batch": (lambda t: _compress(t, teacher=_exported(t, dynamic_batch=False)),
                                                BAD_INPUT, "exported with a fixed batch of 2", ()),
    "torch.export teacher for other images": (lambda t: _compress(t, teacher=_exported(t, shape=(1, 28, 28))),
                                              BAD_INPUT, "was exported for 1x28x28 images, the data is 1x8x8", ()),
    "torch.export file that is not one": (lambda t: _compress(t, teacher=_text(t / "t.pt2")),
                                          BAD_INPUT, "not a loadable torch.export archive", ()),
    # -- data
    "image over the size cap": (lambda t: _compress_with(t, lambda d: _png_claiming(d / "a" / "big.png", 20000, 20000)),
                                BAD_INPUT, "big.png is too large (20000x20000 pixels; edgekd reads images up to 16384 pixels a side", ()),
    "decompression bomb": (lambda t: _compress_with(t, lambda d: _png_claiming(d / "b" / "bomb.png", 12000, 12000)),
                           BAD_INPUT, "bomb.png is too large (12000x12000 pixels", ()),
    "broken image read in a data-loader worker": (_worker_error, BAD_INPUT, "unreadable image", ()),
    # -- the teacher cache
    "corrupt teacher cache entry": (lambda t: _cache_corrupt(t, checksum=True), ENVIRONMENT,
                                    "is corrupt (checksum mismatch); delete it to retrain: rm", ()),
    "teacher cache entry without checksum": (lambda t: _cache_corrupt(t, checksum=False), ENVIRONMENT,
                                             "is corrupt (no checksum beside it)", ()),
    # -- bench
    "bench: empty ONNX, estimated target": (lambda t: ["bench", str(_touch(t / "m.onnx")), "--target", "jetson-orin"],
                                            BAD_INPUT, "m.onnx: empty file", ()),
    "bench: empty ONNX, measured target": (lambda t: ["bench", str(_touch(t / "m.onnx"))], BAD_INPUT, "m.onnx: empty file", ()),
    "bench: text file as ONNX, estimated": (lambda t: ["bench", str(_text(t / "m.onnx")), "--target", "jetson-orin"],
                                            BAD_INPUT, "not an ONNX model", ()),
    "bench: ONNX with an empty graph": (lambda t: ["bench", str(_empty_graph(t)), "--target", "jetson-orin"],
                                        BAD_INPUT, "not an ONNX model (no graph", ()),
    "bench: dynamic height and width": (lambda t: ["bench", str(_dynamic_hw(t)), "--target", "jetson-orin"],
                                        BAD_INPUT, "has dynamic H/W; give the size to time with --input-shape C,H,W", ()),
    "bench: --input-shape against fixed dims": (
        lambda t: ["bench", str(_onnx(t, [_float_input("x", ["n", 1, 28, 28])])), "--input-shape", "3,28,28"],
        BAD_INPUT, "disagrees with the model (C 1 in the file)", ()),
    "bench: --input-shape not C,H,W": (lambda t: ["bench", str(_dynamic_hw(t)), "--input-shape", "28x28"],
                                       BAD_INPUT, "expected C,H,W", ()),
    "bench: model with two inputs": (
        lambda t: ["bench", str(_onnx(t, [_float_input("a", [1, 3, 8, 8]), _float_input("b", [1, 3, 8, 8])]))],
        BAD_INPUT, "takes 2 inputs (a, b)", ()),
    "bench: model with token input": (
        lambda t: ["bench", str(_onnx(t, [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 128])]))],
        BAD_INPUT, "input 'ids' is INT64", ()),
    "bench: model with a flat input": (lambda t: ["bench", str(_onnx(t, [_float_input("x", [1, 784])]))],
                                       BAD_INPUT, "has 2 dimensions", ()),
    "bench: batch that cannot fit in memory": (
        lambda t: ["bench", str(_dynamic_hw(t)), "--input-shape", "1,4096,4096", "--batch", "1000000"],
        ENVIRONMENT, "needs 62500.0 GiB for the input alone", ()),
    # -- text encodings, numeric ranges
    "target TOML in UTF-16": (lambda t: _compress(t, "--target", _target(t, "utf-16")), BAD_INPUT, "not UTF-8 text", ()),
    "target TOML in Latin-1": (lambda t: _compress(t, "--target", _target(t, "latin-1")), BAD_INPUT,
                               "not UTF-8 text (byte 0xfc at offset 3)", ()),
    "options.json in Latin-1 on --resume": (lambda t: ["compress", "--resume", str(_latin1_options(t))],
                                            BAD_INPUT, "options.json: unreadable", ()),
    "check: report in UTF-16": (lambda t: _report(t, "complete", "utf-16"), BAD_INPUT, "not a readable report.json", ()),
    "check: report of a run that did not complete": (lambda t: _report(t, "running"), BAD_INPUT,
                                                     "did not complete (status 'running')", ()),
    "check: report with no status": (lambda t: _report(t, None), BAD_INPUT, "did not complete (status None)", ()),
    "check: NaN tolerance": (lambda t: _report(t, "complete") + ["--tolerance", "nan"], BAD_INPUT, "--tolerance", ()),
    "negative seed": (lambda t: _compress(t, "--seed", "-1"), BAD_INPUT, "--seed", ()),
    "seed beyond 32 bits": (lambda t: _compress(t, "--seed", str(2**40)), BAD_INPUT, "--seed", ()),
    "image size of 100000": (lambda t: _compress(t, "--image-size", "100000"), BAD_INPUT, "--image-size", ()),
    "student width of 1000": (lambda t: _compress(t, "--width", "1000"), BAD_INPUT, "--width", ()),
    "profile seed beyond 32 bits": (lambda t: _compress(t, "--profile", _edited_smoke(t, "seed = 0", "seed = 99999999999")),
                                    BAD_INPUT, "field 'seed'", ()),
    # -- divergence
    "distillation diverges": (lambda t: _compress(t, "--profile", _profile(t, lr=1e30), "--run-dir", str(t / "run")),
                              BAD_INPUT, "distill: training diverged (loss nan at epoch 1, step 2) with learning rate 1e+30", ()),
}


def _checksums(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _one_error_line(err: str, message: str) -> None:
    err = err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("edgekd: error:") and message in err, err


@pytest.mark.parametrize("case", CASES)
def test_hostile_input_gets_one_line_and_loses_nothing(case, tmp_path, capsys, monkeypatch):
    build, code, message, may_rewrite = CASES[case]
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEKD_QUIET", "1")
    monkeypatch.chdir(tmp_path)
    try:
        argv = build(tmp_path)
        if argv[0] == "compress" and "--run-dir" not in argv and "--resume" not in argv:
            argv += ["--run-dir", str(tmp_path / "new-run")]
        before = _checksums(tmp_path)
        capsys.readouterr()
        assert run(argv) == code, capsys.readouterr().err
        _one_error_line(capsys.readouterr().err, message)
        after = _checksums(tmp_path)
        for path, digest in before.items():
            if path.name in may_rewrite:
                continue
            assert path in after, f"{path} was lost"
            assert after[path] == digest, f"{path} was changed"
        new_reports = [p for p in after if p.name == "report.json" and p not in before]
        assert not new_reports, "a failed run must not leave a report"
    finally:
        while _HELD:
            _HELD.pop().close()


# ---------------------------------------------------------------- two runs, one folder; a failed resume


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path, dict]:
    """One real (tiny) run, and a second one started on its folder while it runs: refused."""
    tmp = tmp_path_factory.mktemp("two-runs")
    argv = _compress(tmp, "--profile", _profile(tmp, epochs=2), "--run-dir", str(tmp / "run"))
    first = subprocess.Popen([sys.executable, "-m", "edgekd", *argv], cwd=REPO, text=True,
                             env={**os.environ, "EDGEKD_QUIET": "1", "EDGEKD_CACHE_DIR": str(tmp / "cache")},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = tmp / "run" / LOCK
    deadline = time.monotonic() + 120
    while not (lock.is_file() and str(first.pid) in lock.read_text()):
        assert first.poll() is None, first.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    refused = io.StringIO()
    with contextlib.redirect_stderr(refused):  # the second run: in this process, so it starts at once
        code = run(argv)
    still_running = first.poll() is None
    out, err = first.communicate(timeout=600)
    assert first.returncode in (0, 3, 6), err[-2000:]
    return tmp / "run", tmp, {"code": code, "err": refused.getvalue(), "first_pid": first.pid, "overlapped": still_running}


def test_a_second_run_on_a_busy_folder_is_refused_naming_the_holder(finished_run):
    run_dir, _, seen = finished_run
    assert seen["overlapped"], "the first run ended before the second started: the test proved nothing"
    assert seen["code"] == BAD_INPUT, seen["err"]
    _one_error_line(seen["err"], f"run folder {run_dir} is in use by pid {seen['first_pid']}")
    report = json.loads((run_dir / "report.json").read_text())
    owner = json.loads((run_dir / OWNER).read_text())
    assert report["status"] == "complete" and report["run_id"] == owner["run_id"]
    assert json.loads((run_dir / "options.json").read_text())["profile"].endswith("tiny-0.1-2-8-0.toml")


def test_a_failed_resume_leaves_no_report_that_looks_current(finished_run, tmp_path, capsys, monkeypatch):
    """The issue's case: a diverging profile resumed onto a finished run. The old report must not
    survive as report.json, and `edgekd check` on report.json must not pass."""
    source, tmp, _ = finished_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    old_report = (run_dir / "report.json").read_bytes()
    before = _checksums(run_dir)
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp / "cache"))
    monkeypatch.setenv("EDGEKD_QUIET", "1")
    capsys.readouterr()
    code = run(["compress", "--resume", str(run_dir), "--profile", _profile(tmp_path, lr=1e30, epochs=2)])
    assert code == BAD_INPUT
    _one_error_line(capsys.readouterr().err, "distill: training diverged")
    assert not (run_dir / "report.json").exists()
    assert (run_dir / "report.previous.json").read_bytes() == old_report, "the earlier report is kept, renamed"
    after = _checksums(run_dir)
    for path, digest in before.items():
        if path.name in ("report.json", "report.html", "options.json", "config.json", LOCK):
            continue
        assert after.get(path) == digest, f"{path} was lost or changed"
    assert run(["check", str(run_dir / "report.json"), "--baseline", str(run_dir / "report.previous.json")]) == BAD_INPUT
    _one_error_line(capsys.readouterr().err, "report not found")


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    base = tmp_path / "runs" / "20261123-130000-host-cpu"
    first, lock1 = claim(None, base)
    second, lock2 = claim(None, base)
    try:
        assert first.root == base and second.root == base.with_name(base.name + "-2")
        ids = {json.loads((r.root / OWNER).read_text())["run_id"] for r in (first, second)}
        assert len(ids) == 2
    finally:
        lock1.release()
        lock2.release()


def test_overwrite_starts_afresh_and_keeps_the_old_report_under_another_name(tmp_path):
    folder = _earlier_run(tmp_path)
    old = (folder / "report.json").read_bytes()
    claimed, lock = claim(folder, tmp_path / "unused", overwrite=True)
    lock.release()
    assert not (folder / "report.json").exists() and (folder / "report.previous.json").read_bytes() == old
    assert not list((folder / "stages").glob("*.done.json")), "nothing of the old run counts as done"
    assert claimed.run_id != "0123"


# ---------------------------------------------------------------- silently wrong before, right now


def test_16_bit_grey_images_use_their_full_range(tmp_path):
    from edgekd.config import DataConfig
    from edgekd.data import load_image_folder

    for cls, values in (("dark", (0, 8000)), ("light", (32768, 65535))):
        for value in values:
            _png(tmp_path / "d" / cls / f"{value}.png", value, mode="I;16")
    bundle = load_image_folder(tmp_path / "d", DataConfig(val_fraction=0.25), SIZE, 0)
    seen = {}
    for dataset in (bundle.train, bundle.test):
        for i in range(len(dataset)):
            x, _ = dataset[i]
            path = dataset.samples[i][0] if hasattr(dataset, "samples") else dataset.dataset.samples[dataset.indices[i]][0]
            seen[int(Path(path).stem)] = float(x.mean())
    # normalised with mean 0.5, std 0.5: value / 65535 -> 2 * value / 65535 - 1
    for value, got in seen.items():
        assert got == pytest.approx(2 * value / 65535 - 1, abs=1e-3), (value, got)
    assert len(set(np.round(list(seen.values()), 3))) == 4, "no two levels collapse into one"


def test_memory_exhaustion_is_one_line_and_exit_5(capsys, monkeypatch):
    import edgekd.bench

    def exhausted(*_args, **_kwargs):
        raise MemoryError()

    monkeypatch.setattr(edgekd.bench, "bench_model", exhausted)
    assert run(["bench", "any.onnx"]) == ENVIRONMENT
    _one_error_line(capsys.readouterr().err, "out of memory")


def test_bench_times_a_dynamic_model_at_the_given_shape(tmp_path):
    from edgekd.bench import bench_model

    result = bench_model(_dynamic_hw(tmp_path), "jetson-orin", 1, input_shape=(1, 28, 28))
    smaller = bench_model(_dynamic_hw(tmp_path), "jetson-orin", 1, input_shape=(1, 8, 8))
    assert result.latency.p50 > smaller.latency.p50 > 0


def test_the_teacher_cache_key_follows_the_data_not_its_path(tmp_path):
    """The issue's case: two class folders swapped at the same path must not reuse the cached teacher."""
    from edgekd.data import load_data
    from edgekd.stages.teacher import cache_entry

    profile = load_profile(_profile(tmp_path))
    root = _data(tmp_path)

    def entry() -> Path:
        return cache_entry(profile, load_data(str(root), profile.data, SIZE, 0), tmp_path / "cache")

    first = entry()
    assert entry() == first, "the same data gives the same entry"
    (root / "a").rename(root / "tmp")
    (root / "b").rename(root / "a")
    (root / "tmp").rename(root / "b")
    swapped = entry()
    assert swapped != first
    _png(root / "a" / "0.png", 255)  # one image replaced in place
    assert entry() not in (first, swapped)


def test_compiling_the_teacher_reuses_its_cache_and_a_new_recipe_does_not(tmp_path):
    from edgekd.data import load_data
    from edgekd.stages.teacher import cache_entry

    profile = load_profile(_profile(tmp_path))
    data = load_data(str(_data(tmp_path)), profile.data, SIZE, 0)

    def with_teacher(**change) -> Path:
        return cache_entry(profile.model_copy(update={"teacher": profile.teacher.model_copy(update=change)}),
                           data, tmp_path / "cache")

    eager = with_teacher(compile=False)
    assert with_teacher(compile=True) == eager  # how fast it trains, not what it learns
    assert with_teacher(epochs=profile.teacher.epochs + 1) != eager
