"""The interface every runtime's runner implements, so timing, parity checks and tests are
written once: a runner holds one loaded model (`path`), says what it runs on (`description`),
runs a batch of images (`run`), makes a deterministic input of the right shape and dtype
(`example_input`), and times itself with the shared loop (`measure`)."""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from edgekd.measure.latency import Latency, percentiles, time_calls


class Runner(abc.ABC):
    path: Path  # the model file this runner loaded (.onnx, .engine, ...)
    description: str  # runtime, version and device, e.g. "onnxruntime-cpu 1.22 (2 threads)"

    @abc.abstractmethod
    def run(self, images: np.ndarray) -> np.ndarray:
        """Logits for a batch of images (N, C, H, W)."""

    @abc.abstractmethod
    def example_input(self, batch: int) -> np.ndarray:
        """A fixed pseudo-random batch (seed 0) of the model's input shape and dtype."""

    def measure(self, batch: int, label: str = "latency", **timing) -> Latency:
        """p50/p90/p99 of `run` on `example_input(batch)`, with `time_calls`' warm-up and stopping rule."""
        images = self.example_input(batch)
        samples = time_calls(lambda: self.run(images), label=f"{label} (batch {batch})", **timing)
        p50, p90, p99 = percentiles(samples)
        return Latency(p50, p90, p99, "measured", self.description, batch, len(samples))
