"""Fit a budget: torchvision students on an ImageFolder tree, against the shipped `mobile-cpu` target
(5 ms p50), with a resnet18 teacher that misses it.

1. Writes an ImageFolder tree (train/ and val/, RGB PNGs resized to the run's size) from Fashion-MNIST.
2. Tables the INT8 latency on the target of every student at every size (untrained weights: latency
   depends on the graph's shapes, not on its weights), and of the teacher.
3. Runs `edgekd compress` with `[prune] goal = "budget"` for each student at `--size`, and records the
   path (latency, validation top-1, MACs per step) and the verdict.

Because latency does not depend on the trained weights, a short schedule on a few hundred images is
enough to show the path on a CPU; the accuracies it prints are those of that short schedule, not of
a real training run.

    python benchmarks/budget.py                      # resnet18 and mobilenet_v3_small at 224 px
    python benchmarks/budget.py --students resnet18 --train-per-class 30

Writes benchmarks/out/budget.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgekd.benchmarking import write_results
from edgekd.config import load_profile, load_target
from edgekd.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_idx
from edgekd.metrics import count
from edgekd.models import create_model
from edgekd.pipeline import CompressOptions, budget_fit, compress
from edgekd.stages.prune.budget import int8_latency
from edgekd.stages.teacher import TeacherSource

OUT = Path(__file__).resolve().parent / "out"
TARGET = "mobile-cpu"


def write_image_folder(root: Path, size: int, per_class: dict[str, int], seed: int = 0) -> Path:
    """train/ and val/ trees of RGB PNGs, `size` px square, from Fashion-MNIST's training images."""
    from PIL import Image

    images = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    order = np.random.default_rng(seed).permutation(len(labels))
    taken = {c: 0 for c in range(len(FASHION_MNIST_CLASSES))}
    need = sum(per_class.values())
    for index in order:
        c = int(labels[index])
        if taken[c] >= need:
            continue
        split = "train" if taken[c] < per_class["train"] else "val"
        folder = root / split / FASHION_MNIST_CLASSES[c].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:05d}.png"
        if not path.is_file():
            Image.fromarray(images[index]).convert("RGB").resize((size, size), Image.BILINEAR).save(path)
        taken[c] += 1
        if all(v >= need for v in taken.values()):
            break
    return root


def write_profile(path: Path, student: str, args) -> Path:
    path.write_text(f"""
name = "budget-{student}"
description = "benchmarks/budget.py: short CPU schedule, budget-driven pruning"
seed = 0

[data]
batch_size = {args.batch}

# latency is what this shows: the short schedule's accuracies are near chance, so the accuracy
# budget is opened wide (it would otherwise stop the path at the first step) and the step minimums
# that protect a real small data set are off
[accuracy]
max_drop = 100.0

[teacher]
arch = "resnet18"
epochs = {args.teacher_epochs}
lr = 0.05
min_steps = 0

[student]
arch = "{student}"

[distill]
epochs = 1
lr = 0.05
min_steps = 0

[prune]
goal = "budget"
margin = {args.margin}
step_fraction = {args.step_fraction}
candidate_samples = {args.candidates}
round_to = 8
epochs_per_step = 1
min_steps_per_step = 0
lr = 0.01
max_steps = {args.max_steps}

[quantize]
method = "ptq"
epochs = 0
calibration_samples = 64
""")
    return path


def latency_table(students: list[str], sizes: list[int]) -> list[dict]:
    target, profile = load_target(TARGET), load_profile("default")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ["resnet18 (teacher)"] + students:
            name = arch.split()[0]
            for size in sizes:
                example = torch.randn(8, 3, size, size)
                torch.manual_seed(0)
                model = create_model(name, 10, (3, size, size)).eval()
                ctx = type("Ctx", (), {"example": example, "profile": profile, "target": target})()
                latency = int8_latency(model, ctx, Path(tmp), f"{name} {size}px")
                rows.append({"model": arch, "size": size, "macs": count(model, example)[0],
                             "int8_ms": latency.p50, "source": latency.source,
                             "fits": latency.p50 <= target.budget_p50_ms})
                print(f"{arch:24s} {size:4d}px {rows[-1]['macs'] / 1e6:8.1f}M MACs  INT8 {latency.p50:.3f} ms "
                      f"({latency.source})", flush=True)
    return rows


def run_budget(student: str, size: int, data: Path, args) -> dict:
    run_dir = OUT / "budget-runs" / f"{student}-{size}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    profile = write_profile(OUT / f"budget-{student}.toml", student, args)
    started = time.perf_counter()
    result = compress(CompressOptions(target=TARGET, profile=str(profile), data=str(data), image_size=size,
                                      teacher=TeacherSource(), run_dir=run_dir, cache_dir=OUT / "budget-cache"))
    report = result.report
    prune = next(s for s in report["stages"] if s["name"] == "prune")
    return {
        "student": student, "size": size, "exit_code": int(result.exit_code), "run_dir": str(run_dir),
        "seconds": round(time.perf_counter() - started, 1),
        "stages": [{"name": s["name"], "accuracy": s["accuracy"], "macs": s["macs"], "latency_p50_ms":
                    s["latency_ms"]["p50"], "source": s["latency_ms"]["source"]} for s in report["stages"]],
        "path": prune["details"]["path"], "budget_fit": budget_fit(report), "verdict": report["budget"]["verdict"],
        "against_teacher": report["budget"].get("teacher", {}).get("line"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", default="resnet18,mobilenet_v3_small")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--table-sizes", default="96,160,224")
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--step-fraction", type=float, default=0.5)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--skip-table", action="store_true")
    args = parser.parse_args()
    students = args.students.split(",")
    OUT.mkdir(parents=True, exist_ok=True)
    results = {"target": TARGET, "budget_p50_ms": load_target(TARGET).budget_p50_ms, "args": vars(args)}
    if not args.skip_table:
        results["latency_table"] = latency_table(students, [int(s) for s in args.table_sizes.split(",")])
    data = write_image_folder(OUT / f"fashion-rgb-{args.size}", args.size,
                              {"train": args.train_per_class, "val": args.val_per_class})
    results["runs"] = []
    for student in students:
        results["runs"].append(run_budget(student, args.size, data, args))
        run = results["runs"][-1]
        print(f"\n{student} @ {args.size}px: exit {run['exit_code']}; {run['budget_fit']['message']}", flush=True)
        for p in run["path"]:
            print(f"  step {p['step']:2d} {str(p.get('layer') or '-'):28s} {p['latency_ms']:.3f} ms  "
                  f"val {100 * p['val_accuracy']:.1f}%  {p['macs'] / 1e6:.1f}M MACs  {'' if p.get('kept', True) else 'undone'}")
        print(f"  final: {run['verdict']}", flush=True)
        print(f"  {run['against_teacher']}", flush=True)
        write_results("budget", results, out=OUT)
    write_results("budget", results, out=OUT)


if __name__ == "__main__":
    main()
