"""Detection KD against labels alone on the synthetic clip-art set: mAP on the test split, MACs, time.

Trains the teacher (`teacher_spec`: a wide plain CNN, from scratch), then the student twice per seed on the same schedule: on labels alone and with
distillation (`edgekd.detection.distill`). Prints a markdown table; `--json` also writes the numbers.

    python benchmarks/detection_kd.py --images 500 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edgekd.benchmarking import seeds_argument, write_results
from edgekd.detection.data import make_synthetic, read_coco
from edgekd.detection.distill import DetectionDistillation, DetectionKDWeights
from edgekd.detection.evaluate import evaluate
from edgekd.detection.model import build_detector, student_spec, teacher_spec
from edgekd.detection.train import DetectionObjective, train_detector
from edgekd.metrics import count
from edgekd.training.loop import TrainPlan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--teacher-epochs", type=int, default=16)
    parser.add_argument("--teacher-lr", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=16, help="student epochs, the same with and without KD")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--feature-weight", type=float, default=1.0)
    parser.add_argument("--score-weight", type=float, default=1.0)
    seeds_argument(parser, help="student seeds")
    parser.add_argument("--json", type=Path, help="write the numbers here (with the host and the command)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        root = make_synthetic(Path(tmp), args.images, image_size=args.size, seed=0).root
        splits = {s: read_coco(root / "coco" / s, root / "coco" / f"instances_{s}.json", image_size=args.size)[0]
                  for s in ("train", "val", "test")}
        rows = [{"model": "data", "seconds": time.perf_counter() - started,
                 "images": {s: len(d) for s, d in splits.items()}}]
        classes = len(splits["train"].classes)
        example = torch.rand(1, 3, args.size, args.size)

        torch.manual_seed(0)
        teacher = build_detector(teacher_spec(classes))
        rows.append(_run("teacher", teacher, DetectionObjective(classes), splits, example,
                         TrainPlan(args.teacher_epochs, args.teacher_lr, 5e-4, 16, seed=0)))
        weights = DetectionKDWeights(feature=args.feature_weight, score=args.score_weight)
        for seed in args.seeds:
            plan = TrainPlan(args.epochs, args.lr, 5e-4, 16, seed=seed)
            for kind in ("labels", "kd"):
                torch.manual_seed(seed)
                student = build_detector(student_spec(classes))
                objective = (DetectionObjective(classes) if kind == "labels"
                             else DetectionDistillation(teacher, student.spec.width, weights))
                rows.append({**_run(f"student {kind}", student, objective, splits, example, plan), "seed": seed})
        rows[0]["total_seconds"] = time.perf_counter() - started
    _print(rows, args)
    if args.json:
        write_results(args.json.name, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                      out=args.json.parent)


def _run(name, model, objective, splits, example, plan) -> dict:
    started = time.perf_counter()
    log = train_detector(model, objective, splits["train"], plan, label=name)
    seconds = time.perf_counter() - started
    macs, params = count(model, example)
    val, test = evaluate(model, splits["val"]), evaluate(model, splits["test"])
    row = {"model": name, "macs": macs, "params": params, "seconds": seconds, "final_loss": log.epoch_losses[-1],
           "val": val.as_dict(), "test": test.as_dict()}
    print(json.dumps(row), flush=True)
    return row


def _print(rows: list[dict], args) -> None:
    print(f"\n{rows[0]['images']} images at {args.size} px; total {rows[0]['total_seconds']:.0f} s\n")
    print("| model | seeds | MACs (M) | train s (mean) | val mAP50 | test mAP50 | test mAP@[.5:.95] | test mAP small / medium |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("teacher", "student labels", "student kd"):
        group = [r for r in rows if r["model"] == name]
        if not group:
            continue

        def cell(split, key):
            values = [100 * r[split][key] for r in group]
            if len(values) == 1:
                return f"{values[0]:.1f}"
            return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"

        sizes = " / ".join(cell("test", k) if group[0]["test"][k] is not None else "n/a" for k in ("map_small", "map_medium"))
        print(f"| {name} | {len(group)} | {group[0]['macs'] / 1e6:.1f} | {statistics.mean(r['seconds'] for r in group):.0f} | "
              f"{cell('val', 'map50')} | {cell('test', 'map50')} | {cell('test', 'map')} | {sizes} |")
    labels = {r["seed"]: r for r in rows if r["model"] == "student labels"}
    kd = {r["seed"]: r for r in rows if r["model"] == "student kd"}
    gains = [100 * (kd[s]["test"]["map50"] - labels[s]["test"]["map50"]) for s in kd if s in labels]
    if gains:
        print(f"\nKD - labels, test mAP50 per seed: {', '.join(f'{g:+.1f}' for g in gains)} points")


if __name__ == "__main__":
    main()
