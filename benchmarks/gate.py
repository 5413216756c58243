"""Which normalisation makes the CI latency gate cancel the machine? Measured, not assumed.

The smoke student (a finished host-cpu smoke run's student.int8.onnx), a planted student with
1.5x its MACs (`edgekd.testing.plant_student`) and candidate references are timed side by side (rotated rounds,
pooled samples) under several ONNX Runtime CPU configurations that stand in for different CPUs:
1 and 2 threads, full and basic graph optimisation, and no graph optimisation at all (Q/DQ left
unfused: an extreme "machine" on which INT8 runs as float). For each reference and batch:
- spread: how far student / reference moves between configurations (should be ~0: the machine cancels);
- separation: (planted / reference) / (student / reference) (should stay near 1.5: a regression shows).

    python benchmarks/gate.py --run-dir RUN      # minutes; writes benchmarks/out/gate.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnxruntime as ort
import torch

from edgekd.benchmarking import host, write_results
from edgekd.config import ActivationScheme
from edgekd.measure.normalised_latency import build_reference
from edgekd.measure.latency import time_side_by_side
from edgekd.models import create_model
from edgekd.export.onnx_file import export_onnx
from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner, session_options
from edgekd.testing import plant_student

OUT = Path(__file__).resolve().parent / "out"
CONFIGS = {  # name: (threads, graph optimisation)
    "1 thread": (1, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    "2 threads": (2, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    "1 thread, basic opt": (1, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
    "1 thread, no opt": (1, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
}
TIMING = {"warmup": 5, "min_runs": 20, "max_runs": 60, "max_seconds": 1.5}


class LevelRunner(OnnxRuntimeRunner):
    """edgekd's ONNX Runtime runner with the session at another graph optimisation level (the
    runner's own is ORT_ENABLE_ALL; the same options otherwise)."""

    def __init__(self, path: Path, threads: int, level):
        super().__init__(path, threads)
        if level != ort.GraphOptimizationLevel.ORT_ENABLE_ALL:
            options = session_options(threads)
            options.graph_optimization_level = level
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.description += f", {level.name}"


def side_by_side(paths: dict[str, Path], threads: int, level, batches, rounds: int) -> dict:
    """p50 per file and batch, the files timed in rotated rounds (`time_side_by_side`)."""
    timed = time_side_by_side({n: LevelRunner(p, threads, level) for n, p in paths.items()}, tuple(batches), TIMING,
                              rounds)
    return {n: {b: latency.p50 for b, latency in by_batch.items()} for n, by_batch in timed.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()
    work = OUT / "gate"
    work.mkdir(parents=True, exist_ok=True)
    planted, planted_macs, student_macs = plant_student(args.run_dir, 1.5, work / "planted.int8.onnx")
    torch.manual_seed(0)
    fp32_ref = export_onnx(create_model("edgekd_resnet", 10, (1, 28, 28)).eval(), torch.randn(8, 1, 28, 28),
                           work / "ref-fp32-edgekd_resnet.onnx")
    int8_ref, ref_macs = build_reference(work / "ref-int8-edgekd_cnn-0.25.onnx", 10, (1, 28, 28),
                                         ActivationScheme.SYMMETRIC, 17)
    paths = {"student": args.run_dir / "student.int8.onnx", "planted": planted,
             "ref fp32 edgekd_resnet": fp32_ref, "ref int8 edgekd_cnn x0.25": int8_ref}
    refs = [n for n in paths if n.startswith("ref")]
    results = {}
    for config, (threads, level) in CONFIGS.items():
        results[config] = side_by_side(paths, threads, level, args.batches, args.rounds)
        print(config, json.dumps(results[config]), flush=True)
    rows = []
    for ref in refs:
        for b in args.batches:
            ratios = {c: results[c]["student"][b] / results[c][ref][b] for c in CONFIGS}
            planted_ratios = {c: results[c]["planted"][b] / results[c][ref][b] for c in CONFIGS}
            spread = max(ratios.values()) / min(ratios.values()) - 1
            spread3 = max(list(ratios.values())[:3]) / min(list(ratios.values())[:3]) - 1
            separation = min(planted_ratios[c] / ratios[c] for c in CONFIGS)
            worst = min(planted_ratios.values()) / max(ratios.values())
            rows.append({"reference": ref, "batch": b, "ratios": ratios, "planted_ratios": planted_ratios,
                         "spread": spread, "spread_without_no_opt": spread3, "separation_min": separation,
                         "planted_min_over_student_max": worst})
    print("\n| reference | batch | student/ref per config | spread (all) | spread (without no-opt) | "
          "planted/student (min) | min planted / max student |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        per = ", ".join(f"{v:.3f}" for v in r["ratios"].values())
        print(f"| {r['reference']} | {r['batch']} | {per} | {r['spread']:+.0%} | {r['spread_without_no_opt']:+.0%} | "
              f"{r['separation_min']:.2f} | {r['planted_min_over_student_max']:.2f} |")
    out = {"cpu": host()["cpu"],
           "onnxruntime": ort.__version__, "student_macs": student_macs, "planted_macs": planted_macs,
           "reference_int8_macs": ref_macs, "configs": list(CONFIGS), "timings_p50_ms": results, "rows": rows}
    write_results("gate", out, out=OUT)
    print(f"student {student_macs:,} MACs, planted {planted_macs:,} ({planted_macs / student_macs:.2f}x), "
          f"int8 reference {ref_macs:,}; wrote {OUT / 'gate.json'}")


if __name__ == "__main__":
    main()
