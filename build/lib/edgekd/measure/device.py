"""Is this machine the target's device? Only then is a latency measured here *the target's* latency.

A target's `[device]` table (edgekd.config.TargetDevice) names its device; this module reads what
this machine is (CPU architecture, /proc/cpuinfo model and flags, the board model of a Jetson, the
CUDA GPUs torch can see) and says whether the two match, and why not when they do not.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.config import TargetDevice


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "8.7"


@dataclass(frozen=True)
class Machine:
    """What identifies this machine, as the `[device]` criteria read it."""

    arch: str  # platform.machine(): "x86_64", "aarch64"
    cpu_model: str  # /proc/cpuinfo "model name" (x86) or "CPU part" / "Hardware" (Arm), joined
    cpu_flags: frozenset[str] = frozenset()  # /proc/cpuinfo "flags" (x86) or "Features" (Arm)
    board: str = ""  # /proc/device-tree/model, e.g. "NVIDIA Jetson Orin Nano Developer Kit"
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        """How reports name this machine: CPU model, architecture, CPU count, GPUs."""
        parts = [f"{self.cpu_model or 'unknown CPU'} ({self.arch}, {os.cpu_count()} CPUs)"]
        if self.board:
            parts.append(self.board)
        parts += [f"{g.name} (sm {g.compute_capability})" for g in self.gpus]
        return ", ".join(parts)


def _cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    models: list[str] = []
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "cpu part", "hardware") and value and value not in models:
            models.append(value)
        elif key in ("flags", "features"):
            flags.update(value.split())
    return " / ".join(models), frozenset(flags)


def _gpus() -> tuple[Gpu, ...]:
    """CUDA GPUs through torch (a core dependency); none where torch has no CUDA."""
    import torch

    try:
        if not torch.cuda.is_available():
            return ()
        return tuple(Gpu(torch.cuda.get_device_name(i), "{}.{}".format(*torch.cuda.get_device_capability(i)))
                     for i in range(torch.cuda.device_count()))
    except Exception:  # a broken driver: no usable GPU
        return ()


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def this_machine() -> Machine:
    model, flags = _cpuinfo(_read("/proc/cpuinfo"))
    return Machine(platform.machine(), model or platform.processor(), flags, _read("/proc/device-tree/model"),
                   _gpus())


def _any_in(needles: list[str], haystack: str) -> bool:
    return any(n.lower() in haystack.lower() for n in needles)


def matches(device: TargetDevice, machine: Machine) -> tuple[bool, str]:
    """(True, "") when `machine` is `device`; else (False, the first criterion that fails)."""
    if device.kind == "this-machine":
        return True, ""
    name = device.name
    if device.kind == "cpu":
        if machine.arch != device.arch:
            return False, f"{name} is {device.arch}; this machine is {machine.arch}"
        missing = [f for f in device.cpu_flags if f.lower() not in {x.lower() for x in machine.cpu_flags}]
        if missing:
            return False, f"{name} has CPU features {', '.join(missing)}; this CPU lacks them"
        if device.cpu_model and not _any_in(device.cpu_model, machine.cpu_model):
            return False, (f"{name} is a CPU matching {' or '.join(map(repr, device.cpu_model))}; "
                           f"this CPU is {machine.cpu_model!r}")
        return True, ""
    if device.board and not _any_in(device.board, machine.board):
        return False, f"{name} is a board {' or '.join(map(repr, device.board))}; this machine is " \
                      + (repr(machine.board) if machine.board else "not such a board")
    for gpu in machine.gpus:
        if device.gpu_name and not _any_in(device.gpu_name, gpu.name):
            continue
        if device.compute_capability and gpu.compute_capability not in device.compute_capability:
            continue
        return True, ""
    wanted = " and ".join(part for part in (
        f"named {' or '.join(map(repr, device.gpu_name))}" if device.gpu_name else "",
        f"sm {' or '.join(device.compute_capability)}" if device.compute_capability else "") if part)
    seen = ", ".join(f"{g.name} (sm {g.compute_capability})" for g in machine.gpus) or "no CUDA GPU"
    return False, f"{name} is a GPU {wanted}; this machine has {seen}"
