"""Nothing runs that a file says, nothing is written outside the run (issue 29).

Three attacks, each through the real command line: a `.pt2` teacher whose archive would run code
when torch unpickles it, a target name that would break out of `build_engine.sh`, and symbolic
links planted in a run folder so that a write lands outside it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from edgekd.cli import run
from edgekd.config import TARGETS_DIR, Target
from edgekd.models import create_model
from edgekd.runfolder import LOCK, OWNER
from tests.conftest import edgekd
from tests.test_bad_input_nothing_lost import SIZE, _data, _one_error_line, _profile, _teacher

BAD_INPUT = 2


# ---------------------------------------------------------------- 1. a .pt2 teacher never runs code


class _Payload:
    """What a crafted archive holds: unpickling it creates `marker` (it could do anything)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickled(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buffer)
    return buffer.getvalue()


def _archive(tmp: Path, marker: Path, attack: str) -> Path:
    """A real torch.export archive of a 2-class teacher for 1x8x8 images, with one entry made hostile."""
    model = create_model("edgekd_cnn", 2, (1, SIZE, SIZE), 0.25).eval()
    clean = tmp / "clean.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(2, 1, SIZE, SIZE),),
                                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}), str(clean))
    evil = tmp / "teacher.pt2"
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(evil, "w") as out:
        root = source.namelist()[0].split("/")[0]
        for name in source.namelist():
            data = source.read(name)
            if attack == "sample inputs" and name == f"{root}/data/sample_inputs/model.pt":
                data = _pickled(marker)  # torch retries these with weights_only=False
            elif attack == "weights saved with pickle" and name.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True  # loaded with weights_only=False
                data = json.dumps(config).encode()
            elif attack == "weights saved with pickle" and name == f"{root}/data/weights/{first_weight(source, root)}":
                data = _pickled(marker)
            out.writestr(name, data)
        if attack == "legacy weights file":  # read before the new-style weights, unpickled on fallback
            out.writestr(f"{root}/data/weights/model.pt", _pickled(marker))
    return evil


def first_weight(source: zipfile.ZipFile, root: str) -> str:
    config = json.loads(source.read(f"{root}/data/weights/model_weights_config.json"))
    return next(iter(config["config"].values()))["path_name"]


def _compress_argv(tmp: Path, teacher: Path) -> list[str]:
    return ["compress", "--data", str(_data(tmp)), "--image-size", str(SIZE), "--target", "host-cpu",
            "--profile", _profile(tmp), "--teacher", str(teacher), "--run-dir", str(tmp / "run"),
            "--cache-dir", str(tmp / "cache")]


@pytest.mark.parametrize("attack", ["legacy weights file", "sample inputs", "weights saved with pickle"])
def test_a_crafted_pt2_teacher_runs_no_code(attack, tmp_path):
    marker = tmp_path / "pwned"
    teacher = _archive(tmp_path, marker, attack)
    done = edgekd(*_compress_argv(tmp_path, teacher))
    assert not marker.exists(), "the archive ran code while it was loaded"
    assert done.returncode == BAD_INPUT, done.stderr[-2000:]
    _one_error_line(done.stderr, "refused as a torch.export archive")
    assert not (tmp_path / "run" / "report.json").exists()


def test_a_clean_pt2_teacher_still_loads(tmp_path):
    from edgekd.models.teacher_files import load_pt2

    clean = _archive(tmp_path, tmp_path / "unused", "none")
    assert load_pt2(clean).module()(torch.zeros(3, 1, SIZE, SIZE)).shape == (3, 2)


def test_torchscript_needs_the_trust_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGEKD_QUIET", "1")
    model = create_model("edgekd_cnn", 2, (1, SIZE, SIZE), 0.25).eval()
    torch.jit.script(model).save(str(tmp_path / "teacher.ts"))
    capsys.readouterr()
    assert run(_compress_argv(tmp_path, tmp_path / "teacher.ts")) == BAD_INPUT
    _one_error_line(capsys.readouterr().err, "is TorchScript, which is code and runs when loaded")
    assert not (tmp_path / "run" / "report.json").exists()


# ---------------------------------------------------------------- 2. names never reach a shell unquoted


def test_a_target_name_holding_a_shell_command_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGEKD_QUIET", "1")
    text = (TARGETS_DIR / "host-cpu.toml").read_text().replace('name = "host-cpu"', 'name = "x\\ntouch pwned #"', 1)
    assert "pwned" in text
    (tmp_path / "target.toml").write_text(text)
    argv = _compress_argv(tmp_path, _teacher(tmp_path))
    argv[argv.index("--target") + 1] = str(tmp_path / "target.toml")
    capsys.readouterr()
    assert run(argv) == BAD_INPUT
    _one_error_line(capsys.readouterr().err, "field 'name': 'x\\ntouch pwned #' is not a safe name")
    assert not (tmp_path / "run").exists(), "refused before a run folder was made"


def test_the_build_script_quotes_every_value(tmp_path):
    """Even a name that got past validation, and an ONNX input name chosen by the model's author,
    reach the script's commands as single words: running it creates nothing."""
    import onnx
    from onnx import TensorProto, helper

    from edgekd.config import load_target
    from edgekd.export.tensorrt_engine import write_build_script

    hostile = "$(touch pwned-input) `touch pwned-tick`; touch pwned-semi"
    graph = helper.make_graph([helper.make_node("Identity", [hostile], ["y"])], "g",
                              [helper.make_tensor_value_info(hostile, TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "student.int8.onnx"))
    valid = load_target("jetson-orin")
    target = Target.model_construct(**{**dict(valid), "name": "orin\ntouch pwned-name; $(touch pwned-sub)"})
    script = write_build_script(tmp_path, target)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "edgekd").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/edgekd-args"\n')
    (fake / "trtexec").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/trtexec-args"\n')
    for tool in ("edgekd", "trtexec"):
        (fake / tool).chmod(0o755)
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "TRTEXEC": str(fake / "trtexec")})
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob("pwned*")), "a value ran as a command"
    assert (fake / "edgekd-args").read_text() == f"bench\nstudent.engine\n--target\n{target.name}\n"
    assert f"--minShapes={hostile}:1x1x8x8" in (fake / "trtexec-args").read_text().splitlines()


# ---------------------------------------------------------------- 3. writes never follow a planted link


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _resumable(tmp: Path) -> Path:
    folder = tmp / "run"
    folder.mkdir()
    (folder / OWNER).write_text(json.dumps({"run_id": "feed"}))
    (folder / "options.json").write_text(json.dumps({
        "target": "host-cpu", "profile": _profile(tmp), "data": str(_data(tmp)), "image_size": SIZE,
        "teacher": str(_teacher(tmp)), "teacher_arch": None, "teacher_weights": None, "student": None,
        "width": None, "seed": None}))
    return folder


def _plant(folder: Path, name: str, outside: Path) -> None:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, folder / name)


LINKS = {
    # case: (make the run folder, the planted link, compress with --resume?)
    "lock file, new run": (lambda t: (t / "run").mkdir() or t / "run", LOCK, False),
    "lock file, resumed run": (_resumable, LOCK, True),
    "write probe, resumed run": (_resumable, ".write-test", True),
    "exported file, resumed run": (_resumable, "student.fp32.onnx", True),
    "stage file, resumed run": (_resumable, "stages/distill.onnx", True),
}


@pytest.mark.parametrize("case", LINKS)
def test_a_planted_symlink_in_the_run_folder_is_refused(case, tmp_path, capsys, monkeypatch):
    make, name, resume = LINKS[case]
    monkeypatch.setenv("EDGEKD_QUIET", "1")
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path / "cache"))
    outside = tmp_path / "outside.txt"
    outside.write_text("a file of the user's, outside the run folder\n")
    digest, mode = _sha(outside), stat.S_IMODE(outside.stat().st_mode)
    folder = make(tmp_path)
    _plant(folder, name, outside)
    if resume:
        argv = ["compress", "--resume", str(folder)]
    else:
        argv = _compress_argv(tmp_path, _teacher(tmp_path))
    capsys.readouterr()
    assert run(argv) == BAD_INPUT
    _one_error_line(capsys.readouterr().err, f"holds a symbolic link, {name} -> {outside}")
    assert _sha(outside) == digest and stat.S_IMODE(outside.stat().st_mode) == mode, "written through the link"
    assert (folder / name).is_symlink(), "the user's link is left as it was"
    assert not (folder / "report.json").exists()


def test_a_killed_runs_temporary_files_are_removed_when_the_folder_is_claimed(tmp_path):
    from edgekd.runfolder import claim

    folder = tmp_path / "run"
    (folder / "stages").mkdir(parents=True)
    (folder / OWNER).write_text(json.dumps({"run_id": "feed"}))
    (folder / "options.json").write_text("{}")
    orphans = [folder / ".report.json.abc123.tmp", folder / "stages" / ".teacher.onnx.x1y2.partial"]
    for orphan in orphans:
        orphan.write_bytes(b"half")
    (folder / "keep.tmp").write_bytes(b"a user's file, not one of edgekd's temporary names")
    _, lock = claim(folder, tmp_path / "unused", resume=True)
    lock.release()
    assert not any(o.exists() for o in orphans) and (folder / "keep.tmp").exists()
