"""Accuracy against MAC reduction, for each pruning importance criterion, each recovered by distillation.

Takes a finished `edgekd compress` run's distilled student (`checkpoints/distill.pt`) and its cached
teacher, and for every criterion and every MAC reduction runs the prune stage itself
(`edgekd.stages.prune.prune_to_ratio`, `by = "macs"`) with the run profile's steps, recovery epochs
and learning rate: iterative steps, each recovered by distillation from the teacher. The accuracy
guard is off here (the curve is the point). Every model is measured on the validation split (what
a recipe is chosen on) and on the full test split (reported).

    python benchmarks/prune_curve.py --run RUN_DIR                                  # 4 criteria x 25/50/75%
    python benchmarks/prune_curve.py --run RUN_DIR --criteria l2 taylor --reductions 0.5
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

from edgekd.benchmarking import write_results
from edgekd.checkpoints import load_stage_model
from edgekd.config import Profile, Target
from edgekd.data import load_data
from edgekd.metrics import count
from edgekd.runfolder import RunFolder
from edgekd.stages import StageContext
from edgekd.stages.prune import prune_to_ratio
from edgekd.stages.teacher import TeacherSource, default_cache_dir, obtain_teacher
from edgekd.training.teacher_logits import TeacherLogits
from edgekd.training.loop import accuracy

OUT = REPO / "benchmarks" / "out" / "prune_curve.json"


def run_profile(saved: dict) -> Profile:
    """The run's own recipe from its config.json (a full dump: the other losses' tables are dropped,
    since a profile may only set the chosen loss's)."""
    distill = dict(saved["distill"])
    for loss in ("dkd", "lskd"):
        if distill["loss"] != loss:
            distill.pop(loss, None)
    if distill["loss"] != "kd":
        distill.pop("temperature", None), distill.pop("alpha", None)
    return Profile.model_validate({**saved, "distill": distill})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished `edgekd compress` run folder")
    parser.add_argument("--criteria", nargs="+", default=["l2", "taylor", "group_norm", "random"])
    parser.add_argument("--reductions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    if not (args.run / "config.json").is_file():
        parser.error(f"{args.run} is not an edgekd run folder (no config.json)")
    config = json.loads((args.run / "config.json").read_text())
    profile = run_profile(config["profile"])
    target = Target.model_validate(config["target"])
    data = load_data(None, profile.data, seed=profile.seed)
    teacher = obtain_teacher(TeacherSource(), profile, data, args.cache_dir or default_cache_dir()).model
    student = load_stage_model(args.run, "distill")
    example = torch.stack([data.val[i][0] for i in range(64)])
    logits = TeacherLogits(teacher, data.train, data.num_classes)
    macs0 = count(student, example)[0]
    rows = {"run": str(args.run), "profile": profile.name, "student_macs": macs0,
            "student_val": accuracy(student, data.val), "student_test": accuracy(student, data.test),
            "teacher_val": accuracy(teacher, data.val), "teacher_test": accuracy(teacher, data.test), "curve": []}
    print(f"teacher {100 * rows['teacher_test']:.2f}% test; distilled student {100 * rows['student_test']:.2f}% "
          f"test at {macs0 / 1e6:.2f}M MACs", flush=True)
    for criterion in args.criteria:
        for reduction in args.reductions:
            prune = profile.prune.model_copy(update={"by": "macs", "ratio": reduction, "importance": criterion,
                                                     "goal": "ratio"})
            recipe = profile.model_copy(update={"prune": prune})
            with tempfile.TemporaryDirectory(prefix="edgekd-curve-") as folder:
                ctx = StageContext(recipe, target, data, teacher, RunFolder(Path(folder)).create(), example,
                                   fingerprint=f"curve-{criterion}-{reduction}", teacher_logits=logits)
                started = time.perf_counter()
                pruned = prune_to_ratio(copy.deepcopy(student), ctx).model
                seconds = time.perf_counter() - started
            macs = count(pruned, example)[0]
            row = {"criterion": criterion, "asked": reduction, "macs": macs, "reduction": 1 - macs / macs0,
                   "val": accuracy(pruned, data.val), "test": accuracy(pruned, data.test), "seconds": round(seconds, 1)}
            rows["curve"].append(row)
            print(json.dumps(row), flush=True)
            write_results(OUT.name, rows, out=OUT.parent)
    print(table(rows))
    write_results(OUT.name, rows, table(rows), out=OUT.parent)


def table(rows: dict) -> str:
    lines = ["| criterion | MACs removed (asked) | MACs | val top-1 % | test top-1 % | test vs unpruned (points) | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows["curve"]:
        lines.append(f"| {row['criterion']} | {100 * row['reduction']:.1f}% ({100 * row['asked']:.0f}%) | "
                     f"{row['macs'] / 1e6:.2f}M | {100 * row['val']:.2f} | {100 * row['test']:.2f} | "
                     f"{100 * (row['test'] - rows['student_test']):+.2f} | {row['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
