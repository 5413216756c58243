"""How many QAT epochs the default recipe needs: INT8 validation top-1 after 1, 2 (and more) epochs.

Takes a finished default run's pruned FP32 student (`checkpoints/prune.pt`) and its cached teacher,
and for each seed and each epoch count runs what the quantize stage runs: NNCF calibration on a
seeded stratified sample, then QAT distilled from the teacher (the profile's learning rate and
minimum steps). Every number is on the *validation* split (the split the recipe is chosen on); the
test split is not read. Each QAT seed also draws its own calibration sample.

    python benchmarks/qat_epochs.py --run RUN_DIR                    # epochs 1 2, seeds 0 1 2
    python benchmarks/qat_epochs.py --run RUN_DIR --epochs 1 2 3 --seeds 0,1
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from distill_losses import mean_std  # benchmarks/, the script's own folder
from edgekd.benchmarking import seeds_argument, write_results
from edgekd.checkpoints import load_stage_model
from edgekd.config import load_profile, load_target
from edgekd.data import load_data
from edgekd.training.losses import DistillationObjective
from edgekd.stages.quantize import quantize_with_nncf
from edgekd.stages.teacher import TeacherSource, default_cache_dir, obtain_teacher
from edgekd.training.loop import TrainPlan, evaluate, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished `edgekd compress` run folder")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2])
    seeds_argument(parser, help="QAT seeds (space- or comma-separated)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    seeds = args.seeds
    config = json.loads((args.run / "config.json").read_text())
    profile = load_profile(config["profile"]["name"])  # the recipe the run folder was made with
    target = load_target(config["target"]["name"])
    data = load_data(None, profile.data, seed=profile.seed)
    teacher = obtain_teacher(TeacherSource(), profile, data, args.cache_dir or default_cache_dir()).model
    parent = load_stage_model(args.run, "prune")
    cfg = profile.quantize
    rows = {"parent_fp32_val": evaluate(parent, data.val), "teacher_val": evaluate(teacher, data.val),
            "run": str(args.run), "by_epochs": {}}
    print(f"teacher {100 * rows['teacher_val']:.2f}%  pruned FP32 parent {100 * rows['parent_fp32_val']:.2f}% "
          f"(validation)", flush=True)
    for epochs in args.epochs:
        rows["by_epochs"][str(epochs)] = {"val": [], "seconds": []}
    for seed in seeds:
        for epochs in args.epochs:
            started = time.perf_counter()
            quantized = quantize_with_nncf(copy.deepcopy(parent), data.train, cfg.calibration_samples,
                                           target.activation_scheme, seed=seed)
            objective = DistillationObjective(teacher, profile.distill).with_input_shape(data.input_shape)
            plan = TrainPlan(epochs=epochs, lr=cfg.lr, weight_decay=0.0, batch_size=profile.data.batch_size,
                             seed=seed, warmup=0.05, min_steps=cfg.min_steps)
            fit(quantized, objective, data.train, plan, label=f"QAT {epochs} ep seed {seed}")
            row = rows["by_epochs"][str(epochs)]
            row["val"].append(evaluate(quantized, data.val))
            row["seconds"].append(round(time.perf_counter() - started, 1))
            print(f"seed {seed} epochs {epochs}: INT8 (fake-quant) {100 * row['val'][-1]:.2f}% "
                  f"in {row['seconds'][-1]:.0f} s", flush=True)
    print("| QAT epochs | INT8 val top-1 % (mean ± std) | per seed | drop from FP32 parent (points) | seconds |")
    print("|---:|---:|---|---:|---:|")
    for epochs, row in rows["by_epochs"].items():
        mean, std = mean_std(row["val"])
        row["mean"], row["std"] = mean, std
        print(f"| {epochs} | {100 * mean:.2f} ± {100 * std:.2f} | {', '.join(f'{100 * v:.2f}' for v in row['val'])} | "
              f"{100 * (rows['parent_fp32_val'] - mean):.2f} | {sum(row['seconds']) / len(row['seconds']):.0f} |")
    write_results("qat_epochs", rows, out=REPO / "benchmarks" / "out")


if __name__ == "__main__":
    main()
