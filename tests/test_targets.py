"""Every shipped target loads and shows through the CLI; a broken target file is an error that
names the file and the field."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgekd import cli
from edgekd.config import TARGETS_DIR, Runtime, Target, load_target
from edgekd.errors import BadInputError

TARGET_FILES = sorted(TARGETS_DIR.glob("*.toml"))
runner = CliRunner()


@pytest.fixture
def wide_console(monkeypatch):
    """The CLI's rich console, wide enough that table cells and JSON are not wrapped."""
    monkeypatch.setattr(cli, "out", Console(width=400, no_color=True))


def test_targets_folder_is_not_empty():
    assert len(TARGET_FILES) >= 5


@pytest.mark.parametrize("path", TARGET_FILES, ids=lambda p: p.stem)
def test_target_file_loads(path: Path):
    target = load_target(path.stem)
    assert isinstance(target, Target)
    assert target.name == path.stem  # the file name is how users call it
    assert load_target(str(path)) == target
    assert target.budget_p50_ms is not None or target.budget.latency_p99_ms is not None


@pytest.mark.parametrize("path", TARGET_FILES, ids=lambda p: p.stem)
def test_targets_show(path: Path, wide_console):
    result = runner.invoke(cli.app, ["targets", "show", path.stem, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["name"] == path.stem
    assert shown["runtime"] in {r.value for r in Runtime}
    assert shown["hardware"]["memory_bandwidth_gbs"] > 0


def test_targets_list(wide_console):
    result = runner.invoke(cli.app, ["targets", "list"])
    assert result.exit_code == 0, result.output
    for path in TARGET_FILES:
        assert path.stem in result.output
    assert "jetson-orin" in result.output  # the alias column


def test_alias_resolves_to_orin_nano():
    assert load_target("jetson-orin").name == "jetson-orin-nano"
    assert load_target("jetson-orin") == load_target("jetson-orin-nano")


def test_unknown_target_lists_known_ones():
    with pytest.raises(BadInputError, match="unknown target 'jetson-nope'.*host-cpu"):
        load_target("jetson-nope")


# ---------------------------------------------------------------- validation errors

VALID = """
name = "tmp-target"
runtime = "onnxruntime-cpu"
machine = "any"
threads = 2

[device]
kind = "this-machine"

[budget]
latency_p50_ms = 1.0

[hardware]
int8_tops = 1.0
fp16_tflops = 0.5
fp32_tflops = 0.25
memory_bandwidth_gbs = 10.0
layer_overhead_us = 2.0
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    return path


def test_valid_tmp_target_loads(tmp_path):
    target = load_target(str(_write(tmp_path, VALID)))
    assert target.name == "tmp-target" and target.threads == 2 and target.budget_p50_ms == 1.0


@pytest.mark.parametrize(
    ("old", "new", "field", "what"),
    [
        ('runtime = "onnxruntime-cpu"\n', "", "runtime", "missing required field"),
        ("threads = 2", 'threads = "two"', "threads", "valid integer"),
        ('machine = "any"', 'machine = "any"\nthreds = 2', "threds", "unknown field"),
        ("latency_p50_ms = 1.0", "latency_p50_ms = -1.0", "budget.latency_p50_ms", "greater than 0"),
        ("memory_bandwidth_gbs = 10.0", "memory_bandwidth_gbs = 0", "hardware.memory_bandwidth_gbs", "greater than 0"),
        ('runtime = "onnxruntime-cpu"', 'runtime = "openvino"', "runtime", "onnxruntime-cpu"),
    ],
    ids=["missing", "wrong-type", "unknown-key", "negative-budget", "zero-bandwidth", "bad-enum"],
)
def test_invalid_target_names_file_and_field(tmp_path, old, new, field, what):
    assert old in VALID
    path = _write(tmp_path, VALID.replace(old, new))
    with pytest.raises(BadInputError) as error:
        load_target(str(path))
    message = str(error.value)
    assert str(path) in message
    assert f"field '{field}'" in message
    assert what in message


def test_not_toml_names_file(tmp_path):
    path = _write(tmp_path, "name = \n")
    with pytest.raises(BadInputError, match=f"{path}: not valid TOML"):
        load_target(str(path))


def test_missing_target_file(tmp_path):
    with pytest.raises(BadInputError, match="target file not found"):
        load_target(str(tmp_path / "absent.toml"))


def test_shipped_budgets_are_their_own_numbers():
    """The file is the source of truth: what loads is what the TOML says, not a default."""
    for path in TARGET_FILES:
        raw = tomllib.loads(path.read_text())
        target = load_target(str(path))
        assert target.budget.model_dump(exclude_none=True) == raw["budget"]
        assert target.hardware.model_dump() == raw["hardware"]
