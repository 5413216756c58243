"""The default run, as a user runs it, for several seeds: accuracy against the teacher, MACs, wall time.

For each seed, the real `edgekd compress --target jetson-orin --seed S` with a fresh teacher cache
(a cold run: the teacher trains), then the first seed once more on its now-filled cache (a cached
run). Records per run: the teacher's and the INT8 student's top-1 on the full test split (10,000
images) and on validation, the MAC ratio, the wall time, the exit code and the accuracy verdict.

The goals it checks (issue "accuracy at 10x"): the INT8 student within 1.0 point of its teacher
(mean over seeds, test split) with at least 10x fewer MACs, the teacher at 93% or more; cold run
at most 10 min, cached at most 4 min on 2 cores.

    python benchmarks/default_run.py                  # seeds 0 1 2, then seed 0 cached
    python benchmarks/default_run.py --seeds 0 --target host-cpu
    python benchmarks/default_run.py --seeds 0 --fp32  # as a CPU without bf16 trains: fp32 throughout
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from edgekd.benchmarking import host, seeds_argument, write_results

OUT = REPO / "benchmarks" / "out" / "default_run"


def compress(seed: int, target: str, run_dir: Path, cache: Path, profile: str) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgekd", "compress", "--target", target, "--profile", profile,
                           "--seed", str(seed), "--run-dir", str(run_dir), "--cache-dir", str(cache)],
                          capture_output=True, text=True, env={**os.environ, "EDGEKD_QUIET": "1"})
    seconds = time.perf_counter() - started
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        return {"seed": seed, "exit": done.returncode, "seconds": round(seconds, 1),
                "error": (done.stderr.strip().splitlines() or [""])[-1]}
    report = json.loads(report_path.read_text())
    teacher, student = report["stages"][0], report["stages"][-1]
    return {
        "seed": seed, "exit": done.returncode, "seconds": round(seconds, 1),
        "teacher_test": teacher["accuracy"], "teacher_val": teacher["val_accuracy"],
        "student_test": student["accuracy"], "student_val": student["val_accuracy"],
        "gap_test_points": 100 * (teacher["accuracy"] - student["accuracy"]),
        "gap_val_points": 100 * (teacher["val_accuracy"] - student["val_accuracy"]),
        "teacher_macs": teacher["macs"], "student_macs": student["macs"],
        "mac_ratio": teacher["macs"] / student["macs"],
        "stages": {s["name"]: {"test": s["accuracy"], "val": s["val_accuracy"], "macs": s["macs"],
                               "seconds": s["seconds"]} for s in report["stages"]},
        "accuracy_verdict": report["budget"]["accuracy"]["verdict"],
        "latency_verdict": report["budget"]["verdict"],
        "origin": teacher["details"]["origin"],
    }


def minutes_seconds(seconds: float) -> str:
    """239.6 -> '4 min 0 s' (rounded to the second first, so never '3 min 60 s')."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def fp32_profile(name: str) -> Path:
    """The profile as a file with `mixed_precision = false`: how a CPU without bf16 trains it."""
    source = Path(name) if name.endswith(".toml") else REPO / "profiles" / f"{name}.toml"
    path = OUT / f"{source.stem}-fp32.toml"
    path.write_text("mixed_precision = false\n" + source.read_text())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    seeds_argument(parser, help="seeds, each a cold run; the first also runs cached")
    parser.add_argument("--target", default="jetson-orin")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--no-cached", action="store_true", help="skip the cached rerun of the first seed")
    parser.add_argument("--fp32", action="store_true",
                        help="train in fp32 even where the CPU has bf16 (the profile with mixed_precision = false)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.fp32:
        args.profile = str(fp32_profile(args.profile))
    machine = host()
    results = {"cpu": machine["cpu"], "cpus": machine["cpus"], "commit": machine["commit"], "target": args.target,
               "profile": args.profile, "cold": [], "cached": None}
    name = f"results-{Path(args.profile).stem}-{args.target}"
    for seed in args.seeds:
        cache = OUT / f"cache-{seed}"
        shutil.rmtree(cache, ignore_errors=True)  # cold: the teacher trains
        row = compress(seed, args.target, OUT / f"run-{seed}", cache, args.profile)
        results["cold"].append(row)
        write_results(name, results, out=OUT)
        print(json.dumps({k: row.get(k) for k in ("seed", "exit", "seconds", "teacher_test", "student_test",
                                                  "gap_test_points", "mac_ratio")}), flush=True)
    if not args.no_cached:
        seed = args.seeds[0]
        results["cached"] = compress(seed, args.target, OUT / f"run-{seed}-cached", OUT / f"cache-{seed}", args.profile)
    print(table(results))
    write_results(name, results, table(results), out=OUT)


def table(results: dict) -> str:
    lines = [f"{results['cpu']}, {results['cpus']} CPUs, commit {results['commit']}, target {results['target']}",
             "", "| run | seed | teacher test % | INT8 student test % | gap test (points) | gap val (points) "
             "| MACs teacher / student | wall time | exit |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [("cold", r) for r in results["cold"]] + ([("cached", results["cached"])] if results["cached"] else [])
    for kind, row in rows:
        if "error" in row:
            lines.append(f"| {kind} | {row['seed']} | | | | | | {row['seconds'] / 60:.1f} min | {row['exit']}: {row['error']} |")
            continue
        lines.append(f"| {kind} | {row['seed']} | {100 * row['teacher_test']:.2f} | {100 * row['student_test']:.2f} | "
                     f"{row['gap_test_points']:.2f} | {row['gap_val_points']:.2f} | "
                     f"{row['teacher_macs'] / 1e6:.2f}M / {row['student_macs'] / 1e6:.2f}M = {row['mac_ratio']:.1f}x | "
                     f"{minutes_seconds(row['seconds'])} | {row['exit']} |")
    cold = [r for r in results["cold"] if "error" not in r]
    if cold:
        gap = statistics.fmean(r["gap_test_points"] for r in cold)
        teacher = statistics.fmean(r["teacher_test"] for r in cold)
        ratio = min(r["mac_ratio"] for r in cold)
        slowest = max(r["seconds"] for r in cold)
        lines += ["", f"mean over {len(cold)} seeds: gap {gap:.2f} points on test (goal <= 1.0: "
                      f"{'PASS' if gap <= 1.0 else 'FAIL'}); teacher {100 * teacher:.2f}% (goal >= 93: "
                      f"{'PASS' if teacher >= 0.93 else 'FAIL'}); MACs {ratio:.1f}x fewer at least (goal >= 10: "
                      f"{'PASS' if ratio >= 10 else 'FAIL'}); slowest cold run {slowest / 60:.1f} min (goal <= 10: "
                      f"{'PASS' if slowest <= 600 else 'FAIL'})"]
        if results["cached"] and "error" not in results["cached"]:
            cached = results["cached"]["seconds"]
            lines.append(f"cached run {cached / 60:.1f} min (goal <= 4: {'PASS' if cached <= 240 else 'FAIL'})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
