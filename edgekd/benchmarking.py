"""The benchmarks' shared harness: the host header, `--seeds`, and one JSON + Markdown writer.

Every script in benchmarks/ imports edgekd as an installed package and records the machine its
numbers were made on through `host()`: timings and bf16 numerics depend on the kind of CPU (three
kinds have made the figures in docs/benchmarks.md: an AMD EPYC with AVX512-BF16, an Intel Xeon
without BF16, an Intel Xeon with AMX), on the runtimes' versions and on the commit. Timing itself
is edgekd's own (`edgekd.measure.latency` and the runners of `edgekd.runtimes`), not a loop here.

Backends (torch, ONNX Runtime, OpenVINO) are imported inside the functions that read them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# the CPU flags that change timings (INT8 dot products, AMX tiles) and bf16 numerics (native bf16
# arithmetic: training runs bf16 autocast where the CPU has it)
TIMING_FLAGS = ("avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
RUNTIMES = ("torch", "onnxruntime", "openvino")


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no git, or a hung one
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def repository() -> Path | None:
    """The git checkout edgekd was imported from (the folder holding edgekd/), or None where edgekd
    is an installed copy (site-packages, even inside a checkout's ignored .venv)."""
    import edgekd

    root = Path(edgekd.__file__).resolve().parent.parent
    top = _git(root, "rev-parse", "--show-toplevel")
    return root if top is not None and Path(top).resolve() == root else None


def commit() -> str | None:
    """`git rev-parse --short HEAD` of `repository()`; None outside a checkout."""
    root = repository()
    return _git(root, "rev-parse", "--short", "HEAD") if root is not None else None


def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # not installed, or installed but not loadable here (a missing native library)
        return None


def host() -> dict:
    """The machine the numbers were made on, with the same keys in every benchmark's output."""
    from edgekd.measure.device import this_machine

    machine = this_machine()
    flags = {f.lower() for f in machine.cpu_flags}
    return {
        "machine": platform.machine(),
        "cpu": machine.cpu_model,
        "cpus": os.cpu_count(),
        "flags": [f for f in TIMING_FLAGS if f in flags],
        **{name: _version(name) for name in RUNTIMES},
        "commit": commit(),
    }


def host_line(host: dict) -> str:
    """One Markdown-friendly line: "AMD EPYC 7B13, 2 CPUs, avx512_bf16 avx512_vnni, torch 2.5.1,
    onnxruntime 1.22.0, commit abc1234". Reads what it finds (a host dict from an older file too)."""
    parts = [host.get("cpu") or host.get("machine") or "unknown CPU", f"{host.get('cpus') or '?'} CPUs"]
    parts.append(" ".join(host.get("flags") or []) or "no " + "/".join(TIMING_FLAGS) + " flags")
    # OpenVINO's version carries its build ("2026.4.1-22982-e213a14..."): the line keeps the release
    parts += [f"{name} {str(host[name]).split('-')[0]}" for name in RUNTIMES if host.get(name)]
    parts.append(f"commit {host['commit']}" if host.get("commit") else "commit unknown (not a git checkout)")
    return ", ".join(parts)


def command_line() -> str:
    """The command that is running, as a shell line: `python benchmarks/x.py --seeds 0 1`."""
    return shlex.join(["python", *sys.argv])


def default_out() -> Path:
    """benchmarks/out of the checkout edgekd was imported from; ./benchmarks-out elsewhere."""
    root = repository()
    return root / "benchmarks" / "out" if root is not None else Path.cwd() / "benchmarks-out"


def markdown_text(markdown: str, *, command: str | None = None, machine: dict | None = None) -> str:
    """A Markdown file's text: the command, the host line, a blank line, then `markdown`."""
    machine = machine if machine is not None else host()
    return f"`{command or command_line()}`\n{host_line(machine)}\n\n{markdown.rstrip()}\n"


def write_markdown(path: Path, markdown: str, *, command: str | None = None, machine: dict | None = None) -> Path:
    """`markdown_text` written atomically to `path` (a script's own --markdown file)."""
    from edgekd.runfolder import atomic_write_text

    path = Path(path)
    atomic_write_text(path, markdown_text(markdown, command=command, machine=machine))
    return path


def write_results(name: str, results: dict, markdown: str | None = None, *, out: Path | None = None,
                  command: str | None = None) -> Path:
    """Write `<out>/<name>.json`: {"host": host(), "command": ..., **results}, and with `markdown`
    `<out>/<name>.md` (the command, the host line, then the table). Both atomically (a killed run
    leaves the previous file, never half of one). `out` defaults to `default_out()`; `command` to
    this process's command line. A `name` that ends in .json is the file's own name (a script's
    `--json FILE`: name=FILE.name, out=FILE.parent). Returns the JSON's path."""
    from edgekd.runfolder import atomic_write_text

    clash = sorted({"host", "command"} & set(results))
    if clash:
        raise ValueError(f"results must not hold {', '.join(clash)}: write_results records them itself")
    folder = Path(out) if out is not None else default_out()
    command = command or command_line()
    machine = host()
    path = folder / (name if name.endswith(".json") else f"{name}.json")
    # default=str: a Path (or another plain value without a JSON form) is written as its text rather
    # than losing a finished benchmark's numbers to a TypeError at the end
    atomic_write_text(path, json.dumps({"host": machine, "command": command, **results}, indent=2, default=str) + "\n")
    if markdown is not None:
        write_markdown(path.with_suffix(".md"), markdown, command=command, machine=machine)
    return path


def _seed_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


_seed_list.__name__ = "seed"  # argparse's message: "invalid seed value: 'x'"


class _Seeds(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        seeds = [seed for group in values for seed in group]
        if not seeds or len(set(seeds)) != len(seeds):
            parser.error(f"{option_string}: give at least one seed, each once")
        setattr(namespace, self.dest, seeds)


def seeds_argument(parser: argparse.ArgumentParser, default: Sequence[int] = (0, 1, 2),
                   help: str | None = None) -> None:
    """`--seeds 0 1 2` (integers, nargs="+"), the same in every benchmark: `args.seeds` is a list of
    distinct ints. `--seeds 0,1,2`, which some scripts took before, reads the same."""
    shown = " ".join(map(str, default))
    parser.add_argument("--seeds", type=_seed_list, nargs="+", action=_Seeds, default=list(default), metavar="SEED",
                        help=f"{help or 'seeds'} [default: {shown}]")
