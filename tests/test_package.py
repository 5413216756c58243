"""edgekd installs like a package: a plain (non-editable) install finds its targets and profiles
from any directory, because they are package data, not files beside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.conftest import REPO


def test_a_non_editable_install_finds_its_targets_and_profiles_from_any_directory(tmp_path):
    source = tmp_path / "source"  # a copy: setuptools writes build/ beside the sources it builds
    shutil.copytree(REPO / "edgekd", source / "edgekd", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    assert {p.name for p in (site / "edgekd" / "targets").glob("*.toml")} >= {"host-cpu.toml", "jetson-orin-nano.toml"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "EDGEKD_QUIET": "1"}
    where = subprocess.run([sys.executable, "-c", "import edgekd; print(edgekd.__file__)"], capture_output=True,
                           text=True, cwd=elsewhere, env=env)
    assert where.stdout.strip() == str(site / "edgekd" / "__init__.py")
    for command in (["targets", "show", "jetson-orin"], ["profiles", "show", "smoke"]):
        done = subprocess.run([sys.executable, "-m", "edgekd", *command], capture_output=True, text=True,
                              cwd=elsewhere, env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
    assert "jetson-orin-nano" in subprocess.run([sys.executable, "-m", "edgekd", "targets", "list"], capture_output=True,
                                                text=True, cwd=elsewhere, env=env, timeout=120).stdout


def test_the_readme_layout_names_every_package_folder():
    """README's Layout block is the map a new engineer reads first: every sub-package of edgekd/ is
    on it, and every folder it names exists."""
    import re

    readme = (REPO / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    packages = {p.parent.name for p in (REPO / "edgekd").glob("*/__init__.py")}
    named = set(re.findall(r"^  (\w+)/", block, flags=re.M))
    assert packages <= named, f"not in README's layout: {sorted(packages - named)}"
    assert named <= packages, f"named in README's layout but not in edgekd/: {sorted(named - packages)}"
