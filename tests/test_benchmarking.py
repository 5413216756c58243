"""The benchmarks' shared harness (edgekd/benchmarking.py), and every script in benchmarks/ against it:
importable without running, its work under `if __name__ == "__main__":`, `--help` exiting 0."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.benchmarking import RUNTIMES, TIMING_FLAGS, host, host_line, seeds_argument, write_results
from edgekd.measure.device import this_machine
from tests.conftest import REPO

BENCHMARKS = REPO / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def test_host_has_the_same_keys_everywhere_and_this_machines_cpu():
    record = host()
    assert set(record) == {"machine", "cpu", "cpus", "flags", *RUNTIMES, "commit"}
    assert record["cpu"] == this_machine().cpu_model
    assert record["cpus"] == os.cpu_count()
    present = {f.lower() for f in this_machine().cpu_flags}
    assert record["flags"] == [f for f in TIMING_FLAGS if f in present]
    import onnxruntime
    import torch

    assert (record["torch"], record["onnxruntime"]) == (torch.__version__, onnxruntime.__version__)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert record["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    json.dumps(record)  # plain values only


def test_host_line_names_the_cpu_flags_versions_and_commit():
    record = {"machine": "x86_64", "cpu": "AMD EPYC 7B13", "cpus": 2, "flags": ["avx512_bf16", "avx512_vnni"],
              "torch": "2.14.1", "onnxruntime": "1.22.0", "openvino": None, "commit": "abc1234"}
    assert host_line(record) == ("AMD EPYC 7B13, 2 CPUs, avx512_bf16 avx512_vnni, torch 2.14.1, onnxruntime 1.22.0, "
                                 "commit abc1234")
    bare = host_line({**record, "flags": [], "commit": None})
    assert "no avx512_bf16/" in bare and "commit unknown" in bare and "\n" not in bare


def test_write_results_writes_json_that_round_trips_and_markdown_that_starts_with_command_and_host(tmp_path):
    results = {"rows": [{"model": "edgekd_cnn", "p50_ms": 0.25, "runs": 50}], "threads": 2, "nested": {"1": None}}
    table = "| model | p50 ms |\n|---|---|\n| edgekd_cnn | 0.250 |"
    path = write_results("demo", results, table, out=tmp_path / "out", command="python benchmarks/demo.py --seeds 0")
    assert path == tmp_path / "out" / "demo.json"
    saved = json.loads(path.read_text())
    assert saved == {"host": host(), "command": "python benchmarks/demo.py --seeds 0", **results}
    lines = (tmp_path / "out" / "demo.md").read_text().splitlines()
    assert lines[0] == "`python benchmarks/demo.py --seeds 0`"
    assert lines[1] == host_line(saved["host"])
    assert "\n".join(lines[3:]) == table
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["demo.json", "demo.md"]  # no temporary left


def test_write_results_records_the_real_command_line_and_refuses_results_that_hold_host(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/demo.py", "--out", "a b.json"])
    path = write_results("a b.json", {"x": 1}, out=tmp_path)  # a --json FILE's own name
    assert path == tmp_path / "a b.json"
    assert json.loads(path.read_text())["command"] == "python benchmarks/demo.py --out 'a b.json'"
    with pytest.raises(ValueError, match="host"):
        write_results("clash", {"host": "mine"}, out=tmp_path)


def test_seeds_argument_reads_one_way_and_refuses_repeats():
    parser = argparse.ArgumentParser()
    seeds_argument(parser)
    assert parser.parse_args([]).seeds == [0, 1, 2]
    assert parser.parse_args(["--seeds", "3", "4"]).seeds == [3, 4]
    assert parser.parse_args(["--seeds", "0,1,2"]).seeds == [0, 1, 2]  # the older comma form
    for bad in (["--seeds", "0", "0"], ["--seeds", "x"], ["--seeds"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def work_at_module_level(path: Path) -> list[str]:
    """Top-level statements of a script that do work when it is imported: anything but the docstring,
    imports, definitions, assignments and the `if __name__ == "__main__":` block."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for index, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                             ast.Assign, ast.AnnAssign)):
            continue
        if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("__name__ == '__main__'", "'__main__' == __name__"):
            continue
        found.append(f"line {node.lineno}: {ast.unparse(node).splitlines()[0]}")
    return found


def import_script(path: Path, monkeypatch):
    """`path` as a module (not as __main__), with an argument list no script accepts: a script that
    parses its arguments or runs at import fails here."""
    monkeypatch.syspath_prepend(str(path.parent))  # what `python benchmarks/X.py` puts first
    monkeypatch.setattr(sys, "argv", [str(path), "--not-an-option-of-any-benchmark"])
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # as an import does (a dataclass looks itself up there)
    spec.loader.exec_module(module)
    return module


def test_the_checks_fail_a_script_that_works_at_import(tmp_path, monkeypatch):
    script = tmp_path / "eager.py"
    script.write_text('"""Runs at import."""\nimport argparse\n\n\ndef main():\n    argparse.ArgumentParser().parse_args()\n\n\nmain()\n')
    assert work_at_module_level(script) == ["line 9: main()"]
    with pytest.raises(SystemExit):
        import_script(script, monkeypatch)


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 20, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_imports_without_running(script, monkeypatch):
    assert work_at_module_level(script) == [], f"{script.name}: work outside `if __name__ == \"__main__\":`"
    module = import_script(script, monkeypatch)
    assert callable(getattr(module, "main", None)), f"{script.name}: no main()"


@pytest.fixture(scope="module")
def installed_edgekd(tmp_path_factory) -> Path:
    """A folder that holds this checkout's edgekd and nothing else of the repository, as an
    installed package would: a script that imports `benchmarks.` or the repository root fails."""
    site = tmp_path_factory.mktemp("site")
    (site / "edgekd").symlink_to(REPO / "edgekd", target_is_directory=True)
    return site


HELP_DRIVER = """
import contextlib, io, json, runpy, sys
failed = {}
for path in sys.argv[1:]:
    sys.argv, sys.path[0] = [path, "--help"], path.rsplit("/", 1)[0]  # as `python benchmarks/X.py --help`
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        failed[path] = "returned without printing help"
    except SystemExit as done:
        if done.code not in (0, None) or "usage:" not in out.getvalue():
            failed[path] = f"exit {done.code}"
    except Exception as err:
        failed[path] = f"{type(err).__name__}: {err}"
print(json.dumps(failed))
"""


def test_every_benchmark_answers_help(installed_edgekd, tmp_path):
    """All scripts in one process (a subprocess each took a minute of CI): each one's `--help` exits 0
    and prints usage, with only the installed package importable."""
    driver = tmp_path / "driver.py"
    driver.write_text(HELP_DRIVER)
    path = os.pathsep.join(p for p in (str(installed_edgekd), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "EDGEKD_QUIET": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, str(driver), *map(str, SCRIPTS)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}
