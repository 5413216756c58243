"""Hostile input, round 3 (issue 29): nothing wrong passes, nothing prints a traceback or hangs.

Each case is a real command line against real files: it must exit with the stated code, print one
line, and leave every file that existed before it byte-identical (the round-2 table's checks).
The security cases (code in a teacher, a shell in a name, planted links) are tests/test_security.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekd.cli import run
from edgekd.config import TARGETS_DIR
from tests.conftest import REPO, edgekd
from tests.test_bad_input_nothing_lost import (
    BAD_INPUT, ENVIRONMENT, SIZE, _checksums, _compress, _data, _one_error_line, _png, _profile, _teacher,
)

BASELINE = REPO / "tests/baselines/smoke-host-cpu.json"


# ---------------------------------------------------------------- builders


def _with_class(tmp: Path, name: str, files: dict[str, bytes]) -> list[str]:
    """Two real classes (a, b) and a class folder `name` holding only `files`."""
    argv = _compress(tmp)
    (tmp / "data" / name).mkdir()
    for file, data in files.items():
        (tmp / "data" / name / file).write_bytes(data)
    return argv


def _one_real_class(tmp: Path) -> list[str]:
    """The issue's case: one class of images beside a folder of GIFs only: a 'two-class' task."""
    argv = _compress(tmp)
    shutil.rmtree(tmp / "data" / "b")
    from PIL import Image

    (tmp / "data" / "b").mkdir()
    for i in range(3):
        Image.new("L", (8, 8), 200).save(tmp / "data" / "b" / f"{i}.gif")
    return argv


def _tiff(path: Path, mode: str, values: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.float32 if mode == "F" else np.int32), mode=mode).save(path)
    return path


def _odd_image(tmp: Path, mode: str, value: float) -> list[str]:
    argv = _compress(tmp)
    _tiff(tmp / "data" / "a" / "odd.tiff", mode, np.full((8, 8), value))
    return argv


def _special_teacher(tmp: Path, kind: str) -> list[str]:
    if kind == "fifo":
        os.mkfifo(tmp / "teacher.pt")
        teacher = tmp / "teacher.pt"
    elif kind == "empty":
        (tmp / "teacher.pt").write_bytes(b"")
        teacher = tmp / "teacher.pt"
    else:
        teacher = Path(kind)
    return _compress(tmp, "--teacher", str(teacher))


def _report_with(tmp: Path, change) -> list[str]:
    report = json.loads(BASELINE.read_text())
    report["status"] = "complete"
    change(report)
    (tmp / "report.json").write_text(json.dumps(report))
    return ["check", str(tmp / "report.json"), "--baseline", str(BASELINE)]


def _set(*path, value):
    def change(report):
        parent = report
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = value
    return change


def _named_target(tmp: Path, name: str) -> list[str]:
    text = (TARGETS_DIR / "host-cpu.toml").read_text().replace('name = "host-cpu"', f"name = '{name}'", 1)
    (tmp / "target.toml").write_text(text)
    return _compress(tmp, "--target", str(tmp / "target.toml"))


def _not_utf8(tmp: Path, flag: str) -> list[str]:
    name = os.fsdecode(b"r\xff\xfe")
    if flag == "--teacher":
        shutil.copy(_teacher(tmp), tmp / name)
    return _compress(tmp, flag, str(tmp / name))


CASES = {
    # case: (argv builder, exit code, what the one line must say)
    # -- a class folder with no usable image is no class
    "class folder of text files": (lambda t: _with_class(t, "c", {"notes.txt": b"hello", "labels.csv": b"1,2"}),
                                   BAD_INPUT, "class folder(s) 'c' hold no image edgekd reads (2 other file(s)"),
    "class folder of GIFs beside one real class": (_one_real_class, BAD_INPUT,
                                                   "class folder(s) 'b' hold no image edgekd reads (3 other file(s), e.g. 0.gif"),
    "empty class folder": (lambda t: _with_class(t, "c", {}), BAD_INPUT, "'c' hold no image edgekd reads (no files"),
    # -- every image mode on one scale, or refused
    "float image over 0..1": (lambda t: _odd_image(t, "F", 255.0), BAD_INPUT,
                              "odd.tiff: mode F with values 255..255; edgekd reads mode F over 0..1"),
    "float image with NaN": (lambda t: _odd_image(t, "F", float("nan")), BAD_INPUT, "mode F with non-finite values"),
    "32-bit image over 16 bits": (lambda t: _odd_image(t, "I", 1_000_000), BAD_INPUT,
                                  "mode I with values 1e+06..1e+06; edgekd reads mode I over 0..65535"),
    "32-bit image below zero": (lambda t: _odd_image(t, "I", -5), BAD_INPUT, "mode I with values -5..-5"),
    # -- edgekd check: numbers no run writes
    "check: negative latency": (lambda t: _report_with(t, _set("reference", "normalised_latency", value=-0.5)),
                                BAD_INPUT, "'reference.normalised_latency' is -0.5"),
    "check: zero latency": (lambda t: _report_with(t, _set("reference", "normalised_latency", value=0)),
                            BAD_INPUT, "field 'reference.normalised_latency' is 0"),
    "check: zero stage latency": (lambda t: _report_with(t, _set("stages", -1, "latency_ms", "p50", value=0.0)),
                                  BAD_INPUT, "field 'stages.3.latency_ms.p50' is 0.0"),
    "check: negative MACs": (lambda t: _report_with(t, _set("stages", -1, "macs", value=-10)),
                             BAD_INPUT, "field 'stages.3.macs' is -10"),
    "check: top-1 over 100%": (lambda t: _report_with(t, _set("stages", -1, "accuracy", value=1.5)),
                               BAD_INPUT, "field 'stages.3.accuracy' is 1.5"),
    "check: target a string": (lambda t: _report_with(t, _set("target", value="host-cpu")),
                               BAD_INPUT, "field 'target' is 'host-cpu'"),
    "check: target a list": (lambda t: _report_with(t, _set("target", value=["host-cpu"])),
                             BAD_INPUT, "field 'target' is ['host-cpu']"),
    # -- names: no mathtext, markup or path in them
    "target name with mathtext": (lambda t: _named_target(t, "orin-$\\frac{$"), BAD_INPUT,
                                  "field 'name': 'orin-$\\\\frac{$' is not a safe name"),
    "target name with markup": (lambda t: _named_target(t, "[/bold]orin"), BAD_INPUT, "is not a safe name"),
    "target name that is a path": (lambda t: _named_target(t, "../../etc"), BAD_INPUT, "is not a safe name"),
    # -- special files as the teacher: refused before they are opened
    "teacher: empty file": (lambda t: _special_teacher(t, "empty"), BAD_INPUT, "teacher.pt: empty file"),
    "teacher: /dev/null": (lambda t: _special_teacher(t, "/dev/null"), BAD_INPUT, "/dev/null is a device, not a regular file"),
    "teacher: /dev/zero": (lambda t: _special_teacher(t, "/dev/zero"), BAD_INPUT, "/dev/zero is a device, not a regular file"),
    "teacher: a FIFO": (lambda t: _special_teacher(t, "fifo"), BAD_INPUT, "teacher.pt is a FIFO, not a regular file"),
    # -- names that are not UTF-8
    "run folder name not UTF-8": (lambda t: _not_utf8(t, "--run-dir"), BAD_INPUT,
                                  "r\\xff\\xfe: the name is not valid UTF-8"),
    "teacher name not UTF-8": (lambda t: _not_utf8(t, "--teacher"), BAD_INPUT, "r\\xff\\xfe: the name is not valid UTF-8"),
}


@pytest.mark.parametrize("case", CASES)
def test_hostile_input_round_3(case, tmp_path, capsys, monkeypatch):
    build, code, message = CASES[case]
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEKD_QUIET", "1")
    monkeypatch.chdir(tmp_path)
    argv = build(tmp_path)
    if argv[0] == "compress" and "--run-dir" not in argv:
        argv += ["--run-dir", str(tmp_path / "new-run")]
    before = {p: d for p, d in _checksums(tmp_path).items()}
    capsys.readouterr()
    assert run(argv) == code, capsys.readouterr().err
    _one_error_line(capsys.readouterr().err, message)
    after = _checksums(tmp_path)
    for path, digest in before.items():
        assert after.get(path) == digest, f"{path} was lost or changed"
    assert not [p for p in after if p.name == "report.json" and p not in before], "a failed run must not leave a report"


# ---------------------------------------------------------------- right now, through the CLI


def test_user_text_is_never_markup(tmp_path):
    """`edgekd report` on folders whose names hold markup: printed as they are, no crash."""
    for name in ("run[/bold]", "[red]run"):
        folder = tmp_path / name
        folder.mkdir(parents=True)
        shutil.copy(BASELINE, folder / "report.json")
        done = edgekd("report", str(folder))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"wrote {folder / 'report.html'}"


def test_a_report_name_with_dollars_still_gets_its_plots(tmp_path):
    report = json.loads(BASELINE.read_text())
    report["target"]["name"] = "orin $\\frac{$ $x^$"
    report["stages"][-1]["name"] = "$quantize$"
    (tmp_path / "report.json").write_text(json.dumps(report))
    done = edgekd("report", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "accuracy_latency.png").stat().st_size > 0


def test_print_report_takes_names_and_paths_as_text(capsys):
    from edgekd.cli import print_report

    report = json.loads(BASELINE.read_text())
    report["profile"] = "[red]smoke"
    report["budget"]["verdict"] = report["budget"]["verdict"] + " [/bold]"
    print_report(report, Path("runs/[/x]run"), boxed=False)
    out = capsys.readouterr().out
    assert "edgekd: [red]smoke profile" in out and "run folder: runs/[/x]run" in out and "[/bold]" in out


def test_cpu_out_of_memory_in_torch_words_is_exit_5(capsys, monkeypatch):
    import edgekd.bench

    def exhausted(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(edgekd.bench, "bench_model", exhausted)
    assert run(["bench", "any.onnx"]) == ENVIRONMENT
    _one_error_line(capsys.readouterr().err, "out of memory (")


def test_float_and_32_bit_images_are_scaled_like_8_bit_ones(tmp_path):
    from PIL import Image

    from edgekd.data import _ImageFiles

    grey = np.arange(64).reshape(8, 8) * 4  # 0..252
    Image.fromarray(grey.astype(np.uint8), mode="L").save(tmp_path / "l.png")
    _tiff(tmp_path / "f.tiff", "F", grey / 255.0)
    _tiff(tmp_path / "i.tiff", "I", grey * 65535 / 255.0)
    files = _ImageFiles([(tmp_path / n, 0) for n in ("l.png", "f.tiff", "i.tiff")], SIZE, 1)
    eight_bit, floats, wide = (files[k][0] for k in range(3))
    assert float(eight_bit.min()) == pytest.approx(-1) and float(eight_bit.max()) == pytest.approx(2 * 252 / 255 - 1)
    assert (floats - eight_bit).abs().max() < 1e-4 and (wide - eight_bit).abs().max() < 1e-4


def test_non_utf8_image_names_and_the_c_locale_run_through(tmp_path):
    """An image whose file name is not UTF-8, run under LC_ALL=C from a folder with a non-ASCII name."""
    root = tmp_path / "dåta"
    data = _data(root)
    _png(Path(os.fsdecode(os.fsencode(data / "a") + b"/\xff\xfe.png")), 90)
    argv = ["compress", "--data", str(data), "--image-size", str(SIZE), "--target", "host-cpu",
            "--profile", _profile(tmp_path), "--teacher", str(_teacher(tmp_path, name="lehrer-ü.pt")),
            "--run-dir", str(tmp_path / "lauf-ü"), "--cache-dir", str(tmp_path / "cache")]
    done = edgekd(*argv, env={"LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": ""})
    assert done.returncode in (0, 3, 6), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert json.loads((tmp_path / "lauf-ü" / "report.json").read_text())["status"] == "complete"


def test_escape_bytes_in_a_file_name_never_reach_the_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGEKD_QUIET", "1")
    argv = _compress(tmp_path, "--run-dir", str(tmp_path / "run"))
    (tmp_path / "data" / "b" / "\x1b[2J\x1b[31mred.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    capsys.readouterr()
    assert run(argv) == BAD_INPUT
    err = capsys.readouterr().err
    assert "\x1b" not in err
    _one_error_line(err, "unreadable image")
    assert "\\x1b[2J\\x1b[31mred.png" in err


def test_a_target_given_as_a_path_names_the_default_run_folder_by_its_name(tmp_path, capsys, monkeypatch):
    """The default folder is runs/<time>-<validated target name>: a path as --target (here one that
    climbs out with ..) cannot put it anywhere else."""
    work = tmp_path / "a" / "b"
    (work / "x").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    shutil.copy(TARGETS_DIR / "host-cpu.toml", tmp_path / "out" / "t.toml")
    monkeypatch.chdir(work)
    monkeypatch.setenv("EDGEKD_QUIET", "1")
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["compress", "--data", str(_data(tmp_path)), "--image-size", str(SIZE), "--profile", _profile(tmp_path),
            "--target", "x/../../../out/t.toml", "--teacher", str(_teacher(tmp_path, classes=10))]
    before = {p for p in tmp_path.rglob("*")}
    assert run(argv) == BAD_INPUT  # the teacher is refused after the run folder is made
    _one_error_line(capsys.readouterr().err, "teacher has 10 classes")
    made = sorted(p for p in tmp_path.rglob("*") if p.is_dir() and p not in before)
    assert made and all(p.is_relative_to(work / "runs") for p in made), made
    assert [p.name for p in (work / "runs").iterdir()][0].endswith("-host-cpu")
