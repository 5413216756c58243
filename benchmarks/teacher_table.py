"""Distillation with the teacher online vs its logits looked up in a table, side by side.

The default profile's distillation epoch (its student, teacher, batch, augmentation, mixed
precision and torch.compile setting), run through `edgekd.training.loop.fit` on the full training split,
once with the teacher running on every batch and once reading `edgekd.training.teacher_logits.TeacherLogits`
(built once beforehand; its build time is reported apart). The two alternate for `--rounds`
rounds, so a noisy spell of the host lands on both; each round trains a fresh copy of the same
initial student.

    python benchmarks/teacher_table.py                  # 3 rounds, ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

from edgekd.benchmarking import write_results
from edgekd.config import load_profile
from edgekd.data import augmentations, load_data
from edgekd.training.losses import DistillationObjective
from edgekd.models import create_model
from edgekd.stages.teacher import TeacherSource, default_cache_dir, obtain_teacher
from edgekd.training.teacher_logits import TeacherLogits, view_count
from edgekd.training.loop import TrainPlan, fit, mixed_precision_dtype

OUT = REPO / "benchmarks" / "out" / "teacher_table.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    profile = load_profile(args.profile)
    data = load_data(None, profile.data, seed=profile.seed)
    teacher = obtain_teacher(TeacherSource(), profile, data, args.cache_dir or default_cache_dir()).model
    cfg = profile.distill
    augment = augmentations(profile.data, data)
    plan = TrainPlan(epochs=1, lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=profile.data.batch_size,
                     seed=profile.seed, fast_math=True, augment=augment, compile=cfg.compile)
    table = TeacherLogits(teacher, data.train, data.num_classes)
    started = time.perf_counter()
    table.prepare(augment, torch.device("cpu"), mixed_precision_dtype(torch.device("cpu")))
    build_seconds = time.perf_counter() - started
    torch.manual_seed(0)
    initial = create_model(profile.student.arch, data.num_classes, data.input_shape, profile.student.width)
    seconds: dict[str, list[float]] = {"online": [], "table": []}
    for round_ in range(args.rounds + 1):  # round 0 compiles both paths; it is not counted
        for kind in ("online", "table"):
            student = copy.deepcopy(initial)
            objective = DistillationObjective(teacher, cfg, table if kind == "table" else None)
            started = time.perf_counter()
            fit(student, objective, data.train, plan, label=f"{kind} round {round_}")
            if round_:
                seconds[kind].append(time.perf_counter() - started)
    online, looked_up = statistics.median(seconds["online"]), statistics.median(seconds["table"])
    result = {"profile": profile.name, "images": len(data.train), "augment": list(augment),
              "views": view_count(augment), "table_build_seconds": round(build_seconds, 2),
              "epoch_seconds": {k: [round(v, 2) for v in vs] for k, vs in seconds.items()},
              "online_median": round(online, 2), "table_median": round(looked_up, 2), "speedup": round(online / looked_up, 2)}
    write_results(OUT.name, result, out=OUT.parent)
    print(f"one distillation epoch ({len(data.train)} images): online teacher {online:.1f} s, table {looked_up:.1f} s "
          f"({online / looked_up:.2f}x); the table took {build_seconds:.1f} s to build, once per run; {OUT}")


if __name__ == "__main__":
    main()
