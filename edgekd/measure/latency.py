"""Timing loops and the latency record every runtime fills in the same way."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from edgekd.progress import progress_bar


@dataclass(frozen=True)
class Latency:
    p50: float
    p90: float | None  # None for an estimate: a roofline gives a typical time, not a tail
    p99: float | None
    source: str  # "measured" or "estimated"
    runtime: str  # e.g. "onnxruntime-cpu 1.22 (2 threads)", "roofline: jetson-orin-nano int8"
    batch: int
    runs: int = 0  # timed runs (0 for an estimate)
    # an estimate's interval for p50, from the estimator's measured error (None when measured)
    p50_low: float | None = None
    p50_high: float | None = None
    basis: str = ""  # what an estimate's interval rests on (calibrated, or the plain roofline)

    @property
    def p50_upper(self) -> float:
        """The p50 this latency must be shown under: an estimate's upper end, or the measured time."""
        return self.p50_high if self.p50_high is not None else self.p50

    def as_dict(self) -> dict:
        return asdict(self)


def percentiles(samples_ms: list[float]) -> tuple[float, float, float]:
    p50, p90, p99 = np.percentile(np.asarray(samples_ms), [50, 90, 99])
    return float(p50), float(p90), float(p99)


def time_calls(
    call: Callable[[], object],
    *,
    label: str = "timing",
    warmup: int = 10,
    min_runs: int = 50,
    max_runs: int = 2000,
    max_seconds: float = 10.0,
    tolerance: float = 0.05,
) -> list[float]:
    """Milliseconds per call: warm-up, then rounds of `min_runs` until p99 moves < `tolerance`
    between rounds, or a cap on runs or seconds is reached (never fewer than `min_runs`)."""
    for _ in range(warmup):
        call()
    samples: list[float] = []
    previous_p99 = None
    started = time.perf_counter()
    with progress_bar(label, max_runs) as advance:
        while len(samples) < max_runs:
            for _ in range(min_runs):
                t0 = time.perf_counter()
                call()
                samples.append((time.perf_counter() - t0) * 1000.0)
                advance()
            p99 = percentiles(samples)[2]
            if previous_p99 is not None and abs(p99 - previous_p99) <= tolerance * previous_p99:
                break
            if time.perf_counter() - started > max_seconds:
                break
            previous_p99 = p99
    return samples


def time_alternating(calls: dict[str, Callable[[], object]], *, label: str = "timing", warmup: int = 10,
                     steps: int = 300) -> dict[str, list[float]]:
    """Milliseconds per call of each callable, timed one call of each per step, their order
    reversed every other step (ABBA). A noisy spell on a shared host lasts longer than one step,
    so it lands on every callable alike: a ratio taken step by step cancels it (the gate's
    normalised latency: benchmarks/gate_stability.py)."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    with progress_bar(label, steps) as advance:
        for step in range(steps):
            for name in (names if step % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                calls[name]()
                samples[name].append((time.perf_counter() - t0) * 1000.0)
            advance()
    return samples


# a decision between two files (INT8 or FP32, a layer float or not): short rounds, rotated, pooled
DECISION_TIMING = {"warmup": 5, "min_runs": 30, "max_runs": 200, "max_seconds": 2.0}
DECISION_ROUNDS = 3


def time_side_by_side(runners: dict, batches: tuple[int, ...], timing: dict = DECISION_TIMING,
                      rounds: int = DECISION_ROUNDS) -> dict[str, dict[int, Latency]]:
    """Any runners (`example_input`, `run`, `description`; of one runtime or several), interleaved:
    every round times each in turn, starting one later each round, and the samples of all rounds are
    pooled, so a noisy spell on the host lands on all of them rather than one."""
    names = list(runners)
    samples: dict[tuple[str, int], list[float]] = {(n, b): [] for n in names for b in batches}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for batch in batches:
            for name in order:
                runner = runners[name]
                images = runner.example_input(batch)
                samples[name, batch] += time_calls(lambda: runner.run(images),
                                                   label=f"{name} (batch {batch}, round {r + 1}/{rounds})", **timing)
    return {n: {b: Latency(*percentiles(samples[n, b]), "measured", runners[n].description, b, len(samples[n, b]))
                for b in batches} for n in names}


def measure_runners_side_by_side(runners: dict, batch: int, timing: dict = DECISION_TIMING,
                                 rounds: int = DECISION_ROUNDS) -> dict[str, Latency]:
    """`time_side_by_side` at one batch: {name: Latency}."""
    return {name: by_batch[batch] for name, by_batch in time_side_by_side(runners, (batch,), timing, rounds).items()}
