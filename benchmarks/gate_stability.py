"""How far does the gate's normalised latency move when the same two files are timed again, on an
idle host and beside a busy core (what a shared CI runner does)? Two timing schemes, interleaved
in one run so the same host noise meets both:

- rounds: each model timed for a round of up to 60 calls in turn, 5 rotated rounds, samples pooled,
  normalised = p50(student) / p50(reference) (the gate before 2026-12-02);
- steps: one call of each per step, ABBA order, normalised = median over steps of the per-step
  ratio (`edgekd.measure.normalised_latency.gate_latency`, the gate now).

    python benchmarks/gate_stability.py --run-dir RUN [--repeats 8]   # RUN: a host-cpu smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgekd.benchmarking import host, write_results
from edgekd.measure.normalised_latency import GATE_BATCH, GATE_THREADS, gate_latency
from edgekd.runtimes.onnxruntime import measure_side_by_side

OUT = Path(__file__).resolve().parent / "out"
OLD_TIMING = {"warmup": 5, "min_runs": 20, "max_runs": 60, "max_seconds": 2.0}
OLD_ROUNDS = 5


def rounds_ratio(student: Path, reference: Path) -> float:
    timed = measure_side_by_side({"student": student, "reference": reference}, GATE_THREADS, (GATE_BATCH,),
                                 OLD_TIMING, OLD_ROUNDS)
    return timed["student"][GATE_BATCH].p50 / timed["reference"][GATE_BATCH].p50


def steps_ratio(student: Path, reference: Path) -> float:
    return gate_latency(student, reference)["normalised_latency"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    report = json.loads((args.run_dir / "report.json").read_text())
    student = args.run_dir / report["reference"].get("student_onnx", report["student"]["onnx"])
    reference = args.run_dir / report["reference"]["onnx"]
    results: dict[str, dict[str, list[float]]] = {}
    for load in ("idle", "one busy core"):
        hog = None
        if load != "idle":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            ratios = {"rounds": [], "steps": []}
            for repeat in range(args.repeats):
                for scheme in (("rounds", "steps") if repeat % 2 == 0 else ("steps", "rounds")):
                    ratios[scheme].append((rounds_ratio if scheme == "rounds" else steps_ratio)(student, reference))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        results[load] = ratios
    cpu = host()["cpu"]
    print(f"\n{cpu}; {args.repeats} repeats each, interleaved")
    print("| host | scheme | median ratio | min | max | max / min |")
    print("|---|---|---|---|---|---|")
    rows = []
    for load, ratios in results.items():
        for scheme, values in ratios.items():
            v = np.asarray(values)
            rows.append({"host": load, "scheme": scheme, "median": float(np.median(v)), "min": float(v.min()),
                         "max": float(v.max()), "values": values})
            print(f"| {load} | {scheme} | {np.median(v):.3f} | {v.min():.3f} | {v.max():.3f} | {v.max() / v.min():.3f} |")
    write_results("gate_stability", {"cpu": cpu, "rows": rows}, out=OUT)


if __name__ == "__main__":
    main()
