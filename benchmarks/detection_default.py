"""The default detection run, cold, per seed: `edgekd compress --task detect` end to end.

For each seed: a fresh cache (so the synthetic set is made and the teacher trained: a cold run),
the real command line in a subprocess, its wall time and exit code, and from its report the
teacher's and INT8 student's mAP on the reported (test) split, MACs, and the verdict. Then the run's
FP32 and INT8 student files are timed side by side in ONNX Runtime on this machine at batch 1
(`edgekd.measure.latency.time_alternating`, ABBA order), so "INT8 is not slower" is a ratio measured
in one interleaved loop.

    python benchmarks/detection_default.py --seeds 0 1 2 --json out.json --markdown table.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekd.benchmarking import host, seeds_argument, write_markdown, write_results


def run_seed(seed: int, target: str, profile: str, work: Path) -> dict:
    run_dir, cache = work / f"run{seed}", work / f"cache{seed}"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgekd", "compress", "--task", "detect", "--target", target,
                           "--profile", profile, "--seed", str(seed), "--run-dir", str(run_dir), "--cache-dir", str(cache)],
                          capture_output=True, text=True, env={**os.environ, "EDGEKD_QUIET": "1"})
    wall = time.perf_counter() - started
    if not (run_dir / "report.json").is_file():
        raise SystemExit(f"seed {seed}: no report (exit {done.returncode}): {done.stderr.strip()[-400:]}")
    report = json.loads((run_dir / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    teacher, final = report["stages"][0], report["stages"][-1]
    return {
        "seed": seed, "exit_code": done.returncode, "wall_s": round(wall, 1), "run_dir": str(run_dir),
        "stdout": done.stdout, "dataset": report["dataset"],
        "teacher": teacher["reported"], "student": final["reported"],
        "stages": {n: {"reported": s["reported"], "choice": s["choice"], "macs": s["macs"], "seconds": s["seconds"],
                       "details": {k: v for k, v in s["details"].items() if k in ("kept", "undone", "ptq_choice_score",
                                                                                  "qat_choice_score", "pruning")}}
                   for n, s in stages.items()},
        "macs_ratio": teacher["macs"] / final["macs"],
        "accuracy": {k: report["budget"]["accuracy"][k] for k in ("state", "drop_points", "drop_upper_points", "verdict")},
        "latency_verdict": report["budget"]["verdict"], "state": report["budget"]["state"],
        "postprocess_ms_p50": report["postprocess"]["p50_ms"],
    }


def int8_against_fp32(run_dir: Path, steps: int, threads: int) -> dict:
    from edgekd.measure.latency import time_alternating
    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

    runners = {"fp32": OnnxRuntimeRunner(run_dir / "student.fp32.onnx", threads=threads),
               "int8": OnnxRuntimeRunner(run_dir / "student.int8.onnx", threads=threads)}
    import onnx

    dims = onnx.load(str(run_dir / "student.int8.onnx")).graph.input[0].type.tensor_type.shape.dim
    image = np.random.default_rng(0).random((1, *[d.dim_value for d in dims[1:]]), dtype=np.float32)
    samples = time_alternating({n: (lambda r=r: r.run(image)) for n, r in runners.items()},
                               label=f"fp32 vs int8, {threads} thread(s)", warmup=20, steps=steps)
    fp32, int8 = np.asarray(samples["fp32"]), np.asarray(samples["int8"])
    return {"threads": threads, "steps": steps, "fp32_ms_p50": float(np.median(fp32)), "int8_ms_p50": float(np.median(int8)),
            "ratio_of_medians": float(np.median(fp32) / np.median(int8)), "median_step_ratio": float(np.median(fp32 / int8))}


def markdown(rows: list[dict], timing: list[dict], header: str) -> str:
    lines = [header, "",
             "| seed | exit | state | wall | teacher mAP50 / mAP | INT8 student mAP50 / mAP | drop mAP50 (bound) | MACs ratio | QAT kept | pruning |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = r["stages"].get("quantize", {}).get("details", {})
        p = r["stages"].get("prune", {}).get("details", {})
        pruning = "undone" if "undone" in p else (f"{p['pruning']['macs_before'] / 1e6:.1f} -> "
                                                  f"{p['pruning']['macs_after'] / 1e6:.1f} M" if "pruning" in p else "-")
        lines.append(f"| {r['seed']} | {r['exit_code']} | {r['state']} | {r['wall_s'] / 60:.1f} min | "
                     f"{r['teacher']['map50']:.2f} / {r['teacher']['map']:.2f} | {r['student']['map50']:.2f} / "
                     f"{r['student']['map']:.2f} | {r['accuracy']['drop_points']:.2f} ({r['accuracy']['drop_upper_points']:.2f}) | "
                     f"{r['macs_ratio']:.1f}x | {q.get('kept', '-')} | {pruning} |")
    drops50 = [r["teacher"]["map50"] - r["student"]["map50"] for r in rows]
    drops = [r["teacher"]["map"] - r["student"]["map"] for r in rows]
    lines += ["", f"Mean drop over {len(rows)} seeds: mAP50 {np.mean(drops50):.2f} ± {np.std(drops50):.2f}, "
                  f"mAP@[.5:.95] {np.mean(drops):.2f} ± {np.std(drops):.2f} points (mean ± standard deviation).", ""]
    if timing:
        lines += ["| seed | threads | FP32 ms p50 | INT8 ms p50 | FP32 / INT8 (medians) | median step ratio |",
                  "|---|---|---|---|---|---|"]
        for seed, t in timing:
            lines.append(f"| {seed} | {t['threads']} | {t['fp32_ms_p50']:.3f} | {t['int8_ms_p50']:.3f} | "
                         f"{t['ratio_of_medians']:.2f}x | {t['median_step_ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    seeds_argument(parser, help="seeds, each a cold run")
    parser.add_argument("--target", default="host-cpu")
    parser.add_argument("--profile", default="detect")
    parser.add_argument("--steps", type=int, default=400, help="interleaved timing steps per run and thread count")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work", type=Path, help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the numbers here (with the host and the command)")
    parser.add_argument("--markdown", type=Path, help="write the table here (after the command and the host line)")
    args = parser.parse_args()
    from edgekd import __version__

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows, timing = [], []
        for seed in args.seeds:
            row = run_seed(seed, args.target, args.profile, work)
            rows.append(row)
            print(f"seed {seed}: exit {row['exit_code']} in {row['wall_s']:.0f} s; {row['accuracy']['verdict']}", flush=True)
            for threads in args.threads:
                timing.append((seed, int8_against_fp32(Path(row["run_dir"]), args.steps, threads)))
        header = (f"`python benchmarks/detection_default.py {' '.join(sys.argv[1:])}` on {host()['cpu']} "
                  f"({os.cpu_count()} CPUs), edgekd {__version__}, target {args.target}, profile {args.profile}")
        table = markdown(rows, timing, header)
        print(table)
        if args.json:
            write_results(args.json.name, {"header": header, "runs": rows, "timing": timing}, out=args.json.parent)
        if args.markdown:
            write_markdown(args.markdown, table)


if __name__ == "__main__":
    main()
