"""A training step's memory is reused from the step before, not faulted in from the kernel again."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

# a step's worth of activations: 64 MB in 8 MB tensors, written, then all freed; rounds 3-5 counted
STEPS = """
import resource, sys, torch
sys.path.insert(0, {repo!r})
from edgekd.memory import keep_freed_memory
print(keep_freed_memory() if {keep} else None)
def step():
    tensors = [torch.empty(2 << 20).fill_(1.0) for _ in range(8)]
    del tensors
for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


def faults_per_step(keep: bool) -> tuple[str, float]:
    done = subprocess.run([sys.executable, "-c", STEPS.format(repo=str(REPO), keep=keep)],
                          capture_output=True, text=True, check=True, timeout=120)
    applied, faults = done.stdout.split()
    return applied, float(faults)


def test_freed_step_memory_is_reused_instead_of_faulted_in_again():
    applied, kept = faults_per_step(keep=True)
    _, untouched = faults_per_step(keep=False)
    assert applied == "True"  # glibc took both thresholds
    # 64 MB a step is 16,384 pages: glibc alone returns them to the kernel and faults them in again
    assert untouched > 8000
    assert kept < 500
