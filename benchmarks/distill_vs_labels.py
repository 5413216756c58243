"""Does distillation beat training on labels alone? Teacher, label-only student and distilled student.

The student architecture, epochs, learning rate, weight decay, batch size and seed are the same
for both students; only the objective differs (cross-entropy on labels vs the profile's
distillation loss from the cached teacher). Each seed starts both students from the same
initial weights and the same batch order, so per-seed differences are paired. Top-1 is measured
on the exported ONNX files in ONNX Runtime over the profile's test split (the whole Fashion-MNIST
test set for the default profile); latency is ONNX Runtime's p50 at batch 1 and 64, the three
models timed side by side in rounds, in the same process.

    python benchmarks/distill_vs_labels.py                 # default profile, seeds 0,1,2 (trains the teacher if uncached)
    python benchmarks/distill_vs_labels.py --quick         # smoke profile, short timing (or EDGEKD_BENCH_QUICK=1)
    python benchmarks/distill_vs_labels.py --seeds 0,1,2,3,4 --out /tmp/dvl.json

The teacher comes from edgekd's cache (EDGEKD_CACHE_DIR, or --cache-dir), exactly as
`edgekd compress` finds it; if it is not there it is trained once and cached.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from distill_losses import mean_std  # benchmarks/, the script's own folder
from edgekd.benchmarking import seeds_argument, write_results
from edgekd.config import load_profile
from edgekd.data import load_data
from edgekd.training.losses import CrossEntropyObjective, DistillationObjective
from edgekd.metrics import count
from edgekd.models import create_model
from edgekd.export.onnx_file import export_onnx
from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner, measure_side_by_side
from edgekd.stages.teacher import TeacherSource, default_cache_dir, obtain_teacher
from edgekd.training.loop import TrainPlan, fit, predict_onnx, seed_everything

OUT = Path(__file__).resolve().parent / "out" / "distill_vs_labels.json"
BATCHES = (1, 64)
# time_calls settings per round, and rounds: the full run pools 5 rotated rounds per model and batch
TIMING = {"full": ({"warmup": 10, "min_runs": 50, "max_runs": 200, "max_seconds": 3.0}, 5),
          "quick": ({"warmup": 3, "min_runs": 20, "max_runs": 20, "max_seconds": 1.0}, 1)}


def train_student(profile, data, teacher, seed: int, distilled: bool):
    """The profile's student from seed `seed`, trained like stages/distill.py; labels only if not `distilled`."""
    seed_everything(seed)  # same initial weights for both objectives
    student = create_model(profile.student.arch, data.num_classes, data.input_shape, profile.student.width)
    cfg = profile.distill
    plan = TrainPlan(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                     batch_size=profile.data.batch_size, seed=seed, workers=profile.data.workers, fast_math=True)
    if distilled:
        objective = DistillationObjective(teacher, cfg).with_input_shape(data.input_shape)
    else:
        objective = CrossEntropyObjective()
    label = f"{'distilled' if distilled else 'labels-only'} seed {seed}"
    fit(student, objective, data.train, plan, label=label)
    return student


def run(profile_name: str, seeds: list[int], cache_dir: Path, threads: int, mode: str, out: Path) -> dict:
    profile = load_profile(profile_name)
    data = load_data(None, profile.data, seed=profile.seed)
    teacher = obtain_teacher(TeacherSource(), profile, data, cache_dir)
    example = torch.stack([data.test[i][0] for i in range(min(256, len(data.test)))])
    opset = profile.export.opset
    rows: dict[str, dict] = {}
    paths: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)

        def exported(model, name: str) -> tuple[Path, float]:
            path = export_onnx(model, example, folder / f"{name}.onnx", opset)
            return path, predict_onnx(OnnxRuntimeRunner(path, threads), data.test)

        paths["teacher"], top1 = exported(teacher.model, "teacher")
        macs, params = count(teacher.model, example)
        rows["teacher"] = {"model": f"teacher ({profile.teacher.arch} w{profile.teacher.width:g})",
                           "training": f"labels, {profile.teacher.epochs} ep ({teacher.origin.split(':')[0]})",
                           "top1": [top1], "params": params, "macs": macs}
        student_name = f"{profile.student.arch} w{profile.student.width:g}"
        kd = f"distillation T={profile.distill.temperature:g} alpha={profile.distill.alpha:g}"
        for key, how in (("labels", "labels only"), ("distilled", kd)):
            rows[key] = {"model": f"student ({student_name})", "training": f"{how}, {profile.distill.epochs} ep",
                         "top1": []}
        for seed in seeds:
            for key, distilled in (("labels", False), ("distilled", True)):
                student = train_student(profile, data, teacher.model, seed, distilled)
                path, top1 = exported(student, f"{key}-seed{seed}")
                rows[key]["top1"].append(top1)
                if seed == seeds[0]:  # latency and counts do not depend on the weights: one per model
                    paths[key] = path
                    rows[key]["macs"], rows[key]["params"] = count(student, example)
                print(f"seed {seed}: {key:<9} top-1 {100 * top1:.2f}%", flush=True)
        timing, rounds = TIMING[mode]
        latencies = measure_side_by_side(paths, threads, BATCHES, timing, rounds)
    for key, row in rows.items():
        row["seeds"] = seeds if key != "teacher" else [profile.seed]
        row["top1_mean"], row["top1_std"] = mean_std(row["top1"])
        row["latency_ms"] = {f"batch{b}": lat.as_dict() for b, lat in latencies[key].items()}
    gain = 100 * (rows["distilled"]["top1_mean"] - rows["labels"]["top1_mean"])
    wins = sum(d > l for d, l in zip(rows["distilled"]["top1"], rows["labels"]["top1"]))
    verdict = {"gain_points": gain, "seeds": len(seeds), "seeds_won": wins, "pass": gain > 0}
    payload = {
        "profile": profile.name,
        "mode": mode,
        "dataset": {"name": data.name, "train": len(data.train), "test": len(data.test)},
        "epochs": profile.distill.epochs,
        "threads": threads,
        "timing": {"rounds": rounds, **timing},
        "runtime": latencies["teacher"][1].runtime,  # the timing runner's (host() records the versions)
        "rows": rows,
        "verdict": verdict,
    }
    write_results(out.name, payload, out=out.parent)
    return payload


def print_report(payload: dict) -> None:
    rows, verdict = payload["rows"], payload["verdict"]
    ds = payload["dataset"]
    print(f"\n{ds['name']}: {ds['train']} train / {ds['test']} test images; profile {payload['profile']}; "
          f"ONNX Runtime, {payload['threads']} threads\n")
    print("| model | training | top-1 % (mean ± std) | per seed | params | MACs | p50 b1 ms | p50 b64 ms |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for row in rows.values():
        per_seed = ", ".join(f"{100 * t:.2f}" for t in row["top1"])
        lat = row["latency_ms"]
        print(f"| {row['model']} | {row['training']} | {100 * row['top1_mean']:.2f} ± {100 * row['top1_std']:.2f} "
              f"| {per_seed} | {row['params']:,} | {row['macs'] / 1e6:.2f}M "
              f"| {lat['batch1']['p50']:.3f} | {lat['batch64']['p50']:.3f} |")
    n = verdict["seeds"]
    note = "" if n >= 3 else " (fewer than 3 seeds: not the issue's criterion)"
    print(f"\ndistilled beats labels-only by {verdict['gain_points']:+.2f} points (mean of {n} seeds; "
          f"ahead on {verdict['seeds_won']}/{n}): {'PASS' if verdict['pass'] else 'FAIL'}{note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("EDGEKD_BENCH_QUICK") == "1",
                        help="smoke profile (data slices, 2 epochs) and short timing: a check that the script works")
    parser.add_argument("--profile", help="profile name or file [default: default; smoke with --quick]")
    seeds_argument(parser, help="student seeds (space- or comma-separated)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads [default: 2]")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"teacher cache [default: EDGEKD_CACHE_DIR or {default_cache_dir()}]")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON output [default: {OUT}]")
    args = parser.parse_args(argv)
    seeds = args.seeds
    profile = args.profile or ("smoke" if args.quick else "default")
    payload = run(profile, seeds, args.cache_dir or default_cache_dir(), args.threads,
                  "quick" if args.quick else "full", args.out)
    print_report(payload)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
