"""Which distillation loss closes most of the student-teacher gap? Labels only vs KD vs DKD vs LS-KD.

Every student is the profile's (edgekd_cnn width 1 for the default profile) with the profile's
distillation schedule (epochs, learning rate, weight decay, batch size); only the loss differs.
Each seed starts every loss from the same initial weights and the same batch order, so the
per-seed differences are paired.

The splits are the pipeline's own: `edgekd compress` trains on the training set minus a seeded,
class-stratified validation split (`data.val_fraction`), chooses on validation, and only reports test.
Here, likewise:
1. *Selection*: each loss's candidate hyper-parameters (DKD beta, LS-KD base temperature) train
   with the first seed, and the best validation top-1 wins (ties go to the paper's default,
   listed first). A loss with a single setting (labels, the profile's KD) is not selected.
2. *Report*: the chosen setting of each loss, every seed, measured on the whole test set
   (10,000 images for Fashion-MNIST); the first seed's run is the selection run itself.

The figure of merit is the share of the gap each loss closes:
(top1_loss - top1_labels) / (top1_teacher - top1_labels), from the means over seeds.

    python benchmarks/distill_losses.py                    # default profile, seeds 0,1,2
    python benchmarks/distill_losses.py --quick            # smoke profile, 2 settings per loss at most: checks the script
    python benchmarks/distill_losses.py --seeds 0 --out /tmp/one-seed.json   # time one seed first
    python benchmarks/distill_losses.py --losses labels,kd --distill-epochs 32 --out benchmarks/out/distill_losses_32.json

The teacher comes from edgekd's cache (EDGEKD_CACHE_DIR, or --cache-dir), exactly as
`edgekd compress` finds it; if it is not there it is trained once with the profile's recipe and cached.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from edgekd.benchmarking import seeds_argument, write_results
from edgekd.config import DistillConfig, DKDConfig, LSKDConfig, Profile, load_profile
from edgekd.data import augmentations, load_data
from edgekd.training.losses import CrossEntropyObjective, DistillationObjective
from edgekd.models import create_model
from edgekd.stages.teacher import TeacherSource, default_cache_dir, obtain_teacher
from edgekd.errors import BadInputError
from edgekd.training.teacher_logits import TeacherLogits
from edgekd.training.loop import TrainPlan, accuracy, fit, seed_everything

OUT = Path(__file__).resolve().parent / "out" / "distill_losses.json"


def candidates(profile: Profile, quick: bool) -> dict[str, list[DistillConfig | None]]:
    """Per loss, the settings tried on validation; the paper's default first (it wins ties).
    A loss with one setting is not trained on the validation split: there is nothing to choose.
    The grid is small because each setting costs a full training run on a shared 2-core CPU."""
    base = profile.distill.model_dump(exclude={"loss", "temperature", "alpha", "dkd", "lskd", "hint"})
    kd = [DistillConfig(**base, loss="kd", temperature=profile.distill.temperature, alpha=profile.distill.alpha)]
    dkd = [DistillConfig(**base, loss="dkd", dkd=DKDConfig(beta=b)) for b in (8.0, 2.0)]
    lskd = [DistillConfig(**base, loss="lskd", lskd=LSKDConfig(temperature=t)) for t in (2.0, 1.0)]
    grid = {"labels": [None], "kd": kd, "dkd": dkd, "lskd": lskd}
    return {name: options[:2] for name, options in grid.items()} if quick else grid


def describe(config: DistillConfig | None) -> str:
    if config is None:
        return "cross-entropy on labels"
    if config.loss == "kd":
        return f"KD T={config.temperature:g} alpha={config.alpha:g}"
    if config.loss == "dkd":
        d = config.dkd
        ls = " on z-scored logits" if d.standardize else ""
        return f"DKD alpha={d.alpha:g} beta={d.beta:g} T={d.temperature:g} CE={d.ce_weight:g} warm-up {d.warmup:.0%}{ls}"
    c = config.lskd
    return f"LS-KD T={c.temperature:g} weight={c.weight:g} CE={c.ce_weight:g}"


def train_student(profile: Profile, data, teacher, config: DistillConfig | None, seed: int,
                  logits: TeacherLogits | None = None):
    """The profile's student from seed `seed`, trained like stages/distill.py with `config`'s loss."""
    seed_everything(seed)  # same initial weights for every loss
    student = create_model(profile.student.arch, data.num_classes, data.input_shape, profile.student.width)
    cfg = profile.distill
    plan = TrainPlan(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                     batch_size=profile.data.batch_size, seed=seed, workers=profile.data.workers, fast_math=True,
                     augment=augmentations(profile.data, data), min_steps=cfg.min_steps, compile=cfg.compile)
    objective = CrossEntropyObjective() if config is None else \
        DistillationObjective(teacher, config, logits).with_input_shape(data.input_shape)
    fit(student, objective, data.train, plan, label=f"{describe(config)} seed {seed}")
    return student


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run(profile_name: str, seeds: list[int], cache_dir: Path, quick: bool, out: Path,
        losses: list[str] | None = None, distill_epochs: int | None = None) -> dict:
    started = time.time()
    profile = load_profile(profile_name)
    if distill_epochs is not None:  # a longer (or shorter) schedule, the same for every loss
        profile = profile.model_copy(update={"distill": profile.distill.model_copy(update={"epochs": distill_epochs})})
    data = load_data(None, profile.data, seed=profile.seed)
    teacher = obtain_teacher(TeacherSource(), profile, data, cache_dir)
    grid = candidates(profile, quick)
    if losses:
        grid = {name: grid[name] for name in losses}
    logits = TeacherLogits(teacher.model, data.train, data.num_classes)  # one teacher pass, shared by every student

    selection: dict[str, list[dict]] = {}
    chosen: dict[str, DistillConfig | None] = {}
    first: dict[str, tuple[nn.Module, float]] = {}  # the chosen setting's first-seed student, training seconds
    for name, options in grid.items():
        selection[name], students = [], []
        for config in options:
            t0 = time.time()
            try:
                students.append((train_student(profile, data, teacher.model, config, seeds[0], logits), time.time() - t0))
            except BadInputError as diverged:  # a setting that diverges on this schedule is not chosen
                students.append((None, time.time() - t0))
                selection[name].append({"setting": describe(config), "val_top1": None, "diverged": str(diverged),
                                        "config": None if config is None else config.model_dump(mode="json")})
                print(f"select {name:<6} {describe(config):<60} diverged: {diverged}", flush=True)
                continue
            if len(options) > 1:
                top1 = accuracy(students[-1][0], data.val)
                selection[name].append({"setting": describe(config), "val_top1": top1, "seconds": time.time() - t0,
                                        "config": None if config is None else config.model_dump(mode="json")})
                print(f"select {name:<6} {describe(config):<60} val top-1 {100 * top1:.2f}%", flush=True)
        trained = [i for i, r in enumerate(selection[name]) if r["val_top1"] is not None]
        best = max(trained, key=lambda i: (selection[name][i]["val_top1"], -i), default=0)
        chosen[name], first[name] = options[best], students[best]

    teacher_top1 = accuracy(teacher.model, data.test)
    rows: dict[str, dict] = {"teacher": {"setting": f"{profile.teacher.arch} w{profile.teacher.width:g}, "
                                                    f"labels, {profile.teacher.epochs} ep",
                                         "top1": [teacher_top1]}}
    for name, config in chosen.items():
        rows[name] = {"setting": describe(config), "top1": [], "seconds": [],
                      "config": None if config is None else config.model_dump(mode="json")}

    def summary(done: list[int]) -> dict:
        """The payload over the seeds done so far (written after each seed: a cut-off run keeps them)."""
        for row in rows.values():
            row["top1_mean"], row["top1_std"] = mean_std(row["top1"])
        gap = rows["teacher"]["top1_mean"] - rows["labels"]["top1_mean"]
        for name in grid:
            if name != "labels":
                gain = rows[name]["top1_mean"] - rows["labels"]["top1_mean"]
                rows[name]["gap_closed"] = gain / gap if gap > 0 else None
                rows[name]["seeds_ahead_of_labels"] = sum(a > b for a, b in zip(rows[name]["top1"], rows["labels"]["top1"]))
        best = max((n for n in grid if n != "labels"), key=lambda n: rows[n]["top1_mean"])
        payload = {
            "profile": profile.name,
            "quick": quick,
            "dataset": {"name": data.name, "train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "teacher": {"origin": teacher.origin, "test_top1": teacher_top1},
            "student": f"{profile.student.arch} w{profile.student.width:g}",
            "schedule": {"epochs": profile.distill.epochs, "lr": profile.distill.lr,
                         "weight_decay": profile.distill.weight_decay, "batch_size": profile.data.batch_size,
                         "min_steps": profile.distill.min_steps, "augment": list(augmentations(profile.data, data))},
            "selection": {"seed": seeds[0], "results": selection},
            "seeds_done": done,
            "rows": rows,
            "verdict": {"best": best, "gap_closed": rows[best]["gap_closed"], "goal": 0.5,
                        "pass": (rows[best]["gap_closed"] or 0) >= 0.5, "seeds": len(done)},
            "threads": torch.get_num_threads(),  # torch's, training here (host() records the machine)
            "seconds": time.time() - started,
        }
        write_results(out.name, payload, out=out.parent)
        return payload

    for index, seed in enumerate(seeds):
        for name, config in chosen.items():
            t0 = time.time()
            student, seconds = first[name] if index == 0 else \
                (train_student(profile, data, teacher.model, config, seed, logits), time.time() - t0)
            rows[name]["top1"].append(accuracy(student, data.test))
            rows[name]["seconds"].append(seconds)  # training time of that student
            print(f"seed {seed}: {name:<6} test top-1 {100 * rows[name]['top1'][-1]:.2f}% "
                  f"({rows[name]['seconds'][-1]:.0f} s)", flush=True)
        payload = summary(seeds[: index + 1])
    return payload


def print_report(payload: dict) -> None:
    ds = payload["dataset"]
    print(f"\n{ds['name']}: every student trains on {ds['train']} images; settings are chosen on {ds['val']} "
          f"validation images (seeded, stratified) and reported on {ds['test']} test images; student "
          f"{payload['student']}, {payload['schedule']['epochs']} epochs, augment {payload['schedule']['augment']}\n")
    print(f"| loss | validation top-1 % per setting (seed {payload['selection']['seed']}) |")
    print("|---|---|")
    for name, results in payload["selection"]["results"].items():
        if results:
            print(f"| {name} | " + "; ".join(f"{r['setting']}: " + ("diverged" if r["val_top1"] is None else
                                                                   f"{100 * r['val_top1']:.2f}") for r in results) + " |")
    print("\n| model | chosen setting | test top-1 % (mean ± std) | per seed | gap closed |")
    print("|---|---|---:|---|---:|")
    for name, row in payload["rows"].items():
        per_seed = ", ".join(f"{100 * t:.2f}" for t in row["top1"])
        closed = row.get("gap_closed")
        closed = "" if closed is None else f"{100 * closed:.0f}%"
        print(f"| {name} | {row['setting']} | {100 * row['top1_mean']:.2f} ± {100 * row['top1_std']:.2f} "
              f"| {per_seed} | {closed} |")
    v = payload["verdict"]
    note = "" if v["seeds"] >= 3 else " (fewer than 3 seeds: not the issue's criterion)"
    closed = "n/a" if v["gap_closed"] is None else f"{100 * v['gap_closed']:.0f}%"
    print(f"\nbest loss: {v['best']}, closes {closed} of the label-only gap (goal >= 50%): "
          f"{'PASS' if v['pass'] else 'FAIL'}{note}; {payload['seconds'] / 60:.1f} min in all")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("EDGEKD_BENCH_QUICK") == "1",
                        help="smoke profile, at most 2 settings per loss: a check that the script works")
    parser.add_argument("--profile", help="profile name or file [default: default; smoke with --quick]")
    seeds_argument(parser, help="student seeds (space- or comma-separated); the first also selects")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"teacher cache [default: EDGEKD_CACHE_DIR or {default_cache_dir()}]")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON output [default: {OUT}]")
    parser.add_argument("--losses", help="comma-separated subset of labels,kd,dkd,lskd [default: all]; labels is always kept")
    parser.add_argument("--distill-epochs", type=int, help="override the profile's [distill] epochs, for every loss")
    args = parser.parse_args(argv)
    seeds = args.seeds
    if args.distill_epochs is not None and args.distill_epochs < 1:
        parser.error("--distill-epochs must be at least 1")
    profile = args.profile or ("smoke" if args.quick else "default")
    losses = None
    if args.losses:
        known = list(candidates(load_profile(profile), args.quick))
        losses = ["labels"] + [n.strip() for n in args.losses.split(",") if n.strip() and n.strip() != "labels"]
        unknown = [n for n in losses if n not in known]
        if unknown:
            parser.error(f"--losses: unknown loss {', '.join(unknown)} (choose from {', '.join(known)})")
    payload = run(profile, seeds, args.cache_dir or default_cache_dir(), args.quick, args.out, losses,
                  args.distill_epochs)
    print_report(payload)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
