"""The experiments behind the default recipe: teachers and students on Fashion-MNIST, judged on validation.

Each named experiment trains one model with edgekd's own loop (`edgekd.training.loop.fit`, the pipeline's
mixed precision and torch.compile) on the pipeline's training split, and prints its top-1 on the
validation split, which every choice was made on, and on the test split, which is only reported.
Teachers are saved under benchmarks/out/recipe/ for the students that name them.

    python benchmarks/recipe_choices.py --list
    python benchmarks/recipe_choices.py teacher-pooled teacher-grid student-grid-lr0.1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

from edgekd.config import DataConfig, DistillConfig
from edgekd.data import load_data
from edgekd.training.losses import CrossEntropyObjective, DistillationObjective
from edgekd.metrics import count
from edgekd.models import ModelSpec, create_model, load_teacher, save_checkpoint
from edgekd.training.teacher_logits import TeacherLogits
from edgekd.training.loop import TrainPlan, accuracy, fit

OUT = REPO / "benchmarks" / "out" / "recipe"
DKD2 = {"loss": "dkd", "dkd": {"beta": 2.0}}

# name: ("teacher", arch, epochs, lr, augment) or ("student", teacher name, arch, width, epochs, lr, distill
# options, or None: labels alone)
EXPERIMENTS = {
    "teacher-pooled": ("teacher", "edgekd_resnet", 10, 0.3, ("hflip",)),
    "teacher-pooled-shift": ("teacher", "edgekd_resnet", 10, 0.3, ("hflip", "shift")),
    "teacher-grid": ("teacher", "edgekd_resnet_fc", 10, 0.3, ("hflip",)),
    "teacher-grid-8ep": ("teacher", "edgekd_resnet_fc", 8, 0.3, ("hflip",)),
    "teacher-grid-7ep": ("teacher", "edgekd_resnet_fc", 7, 0.3, ("hflip",)),
    "student-pooled-w1-kd": ("student", "teacher-pooled", "edgekd_cnn", 1.0, 8, 0.2, {}),
    "student-pooled-w1-dkd": ("student", "teacher-pooled", "edgekd_cnn", 1.0, 8, 0.2, DKD2),
    "student-pooled-w0.5-kd": ("student", "teacher-pooled", "edgekd_cnn", 0.5, 8, 0.2, {}),
    "student-pooled-w0.5-dkd": ("student", "teacher-pooled", "edgekd_cnn", 0.5, 8, 0.2, DKD2),
    "student-pooled-w0.5-dkd-16ep": ("student", "teacher-pooled", "edgekd_cnn", 0.5, 16, 0.2, DKD2),
    "student-pooled-w0.6-dkd": ("student", "teacher-pooled", "edgekd_cnn", 0.6, 8, 0.2, DKD2),
    "student-resnet-w0.33-dkd": ("student", "teacher-pooled", "edgekd_resnet", 0.33, 8, 0.2, DKD2),
    "student-grid-dkd": ("student", "teacher-pooled", "edgekd_cnn_fc", 1.0, 8, 0.2, DKD2),
    "student-grid-dkd-16ep": ("student", "teacher-grid", "edgekd_cnn_fc", 1.0, 16, 0.2, DKD2),
    "student-grid-kd-16ep": ("student", "teacher-grid", "edgekd_cnn_fc", 1.0, 16, 0.2, {}),
    "student-grid-lr0.1": ("student", "teacher-grid", "edgekd_cnn_fc", 1.0, 16, 0.1, {}),
    "student-grid-lr0.05": ("student", "teacher-grid", "edgekd_cnn_fc", 1.0, 16, 0.05, {}),
    "student-t8-16ep": ("student", "teacher-grid-8ep", "edgekd_cnn_fc", 1.0, 16, 0.1, {}),
    "student-t8-14ep": ("student", "teacher-grid-8ep", "edgekd_cnn_fc", 1.0, 14, 0.1, {}),
    "student-t8-12ep": ("student", "teacher-grid-8ep", "edgekd_cnn_fc", 1.0, 12, 0.1, {}),
    "student-grid-labels": ("student", "teacher-grid", "edgekd_cnn_fc", 1.0, 16, 0.1, None),
    "student-grid-labels-32ep": ("student", "teacher-grid", "edgekd_cnn_fc", 1.0, 32, 0.1, None),
    "student-grid-kd-32ep": ("student", "teacher-grid", "edgekd_cnn_fc", 1.0, 32, 0.1, {}),
    "student-grid-kd-T2": ("student", "teacher-grid", "edgekd_cnn_fc", 1.0, 16, 0.1, {"temperature": 2.0}),
    "student-grid-kd-alpha1": ("student", "teacher-grid", "edgekd_cnn_fc", 1.0, 16, 0.1, {"alpha": 1.0}),
    "student-grid-hint": ("student", "teacher-grid", "edgekd_cnn_fc", 1.0, 16, 0.1,
                          {"hint": {"teacher_layer": "features.2", "student_layer": "features.2"}}),
}


def run(name: str, data, example: torch.Tensor) -> dict:
    kind, *spec = EXPERIMENTS[name]
    started = time.perf_counter()
    if kind == "teacher":
        arch, epochs, lr, augment = spec
        torch.manual_seed(0)
        model = create_model(arch, data.num_classes, data.input_shape)
        plan = TrainPlan(epochs=epochs, lr=lr, weight_decay=5e-4, batch_size=256, seed=0, augment=augment,
                         fast_math=True, compile=True)
        fit(model, CrossEntropyObjective(), data.train, plan, label=name)
        OUT.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, ModelSpec(arch, data.num_classes, data.input_shape), OUT / f"{name}.pt")
    else:
        teacher_name, arch, width, epochs, lr, options = spec
        path = OUT / f"{teacher_name}.pt"
        if not path.is_file():
            run(teacher_name, data, example)
        teacher, _ = load_teacher(str(path), data.num_classes, data.input_shape)
        torch.manual_seed(0)
        model = create_model(arch, data.num_classes, data.input_shape, width)
        objective = CrossEntropyObjective() if options is None else DistillationObjective(
            teacher, DistillConfig(**options), TeacherLogits(teacher, data.train, data.num_classes))
        objective = objective if options is None else objective.with_input_shape(data.input_shape)
        plan = TrainPlan(epochs=epochs, lr=lr, weight_decay=5e-4, batch_size=256, seed=0, augment=("hflip",),
                         fast_math=True, compile=True)
        fit(model, objective, data.train, plan, label=name)
    return {"experiment": name, "spec": [kind, *map(str, spec)], "macs": count(model, example)[0],
            "val": accuracy(model, data.val), "test": accuracy(model, data.test),
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="experiments to run (see --list)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in EXPERIMENTS]
    if args.list or not args.names or unknown:
        if unknown:
            print(f"unknown experiment(s): {', '.join(unknown)}", file=sys.stderr)
        print("\n".join(f"{name:30s} {spec}" for name, spec in EXPERIMENTS.items()))
        sys.exit(2 if unknown else 0)
    torch.set_num_threads(2)
    data = load_data(None, DataConfig())
    example = torch.stack([data.val[i][0] for i in range(4)])
    for name in args.names:
        row = run(name, data, example)
        print(json.dumps(row), flush=True)
        OUT.mkdir(parents=True, exist_ok=True)
        with (OUT / "results.jsonl").open("a") as results:
            results.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
