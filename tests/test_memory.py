"""A training step's memory is reused from the step before, not faulted in from the kernel again."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

# a step's worth of activations: 64 MB in 8 MB tensors, written, then all freed; after 5 steps of
# warm-up, 5 are counted. "glibc" pins glibc's starting thresholds (128 KiB; an untouched process
# moves them as it goes, so whether it faults depends on what else it allocated).
STEPS = """
import ctypes, resource, sys, torch
sys.path.insert(0, {repo!r})
from edgekd.training import memory
if {mode!r} == "edgekd":
    print(memory.keep_freed_memory())
else:
    libc = ctypes.CDLL("libc.so.6")
    print(bool(libc.mallopt(memory._M_MMAP_THRESHOLD, 128 << 10) and libc.mallopt(memory._M_TRIM_THRESHOLD, 128 << 10)))
def step():
    tensors = [torch.empty(2 << 20).fill_(1.0) for _ in range(8)]
    del tensors
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_step(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", STEPS.format(repo=str(REPO), mode=mode)],
                          capture_output=True, text=True, check=True, timeout=120)
    applied, faults = done.stdout.split()
    assert applied == "True"  # glibc took both thresholds
    return float(faults)


def test_freed_step_memory_is_reused_instead_of_faulted_in_again():
    # 64 MB a step is 16,384 pages: with glibc's starting thresholds every step faults them all in
    assert faults_per_step("glibc") > 15000
    assert faults_per_step("edgekd") < 100
