"""Which distillation loss closes most of the student-teacher gap? Labels only vs KD vs DKD vs LS-KD.

Every student is the profile's (edgekd_cnn width 1 for the default profile) with the profile's
distillation schedule (epochs, learning rate, weight decay, batch size); only the loss differs.
Each seed starts every loss from the same initial weights and the same batch order, so the
per-seed differences are paired.

Two phases, so that no choice ever looks at the test set:
1. *Selection*: each loss's candidate hyper-parameters (DKD beta, LS-KD base temperature, ...)
   train on the training set minus a seeded, class-stratified validation split, and the best
   validation top-1 wins (seed 0; ties go to the paper's default, listed first).
2. *Report*: the chosen setting of each loss trains on the whole training set with every seed,
   and is measured on the whole test set (10,000 images for Fashion-MNIST).

The figure of merit is the share of the gap each loss closes:
(top1_loss - top1_labels) / (top1_teacher - top1_labels), from the means over seeds.

    python benchmarks/distill_losses.py                    # default profile, seeds 0,1,2
    python benchmarks/distill_losses.py --quick            # smoke profile, 2 settings per loss at most: checks the script
    python benchmarks/distill_losses.py --seeds 0 --out /tmp/one-seed.json   # time one seed first

The teacher comes from edgekd's cache (EDGEKD_CACHE_DIR, or --cache-dir), exactly as
`edgekd compress` finds it; if it is not there it is trained once with the profile's recipe and cached.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from edgekd.config import DistillConfig, DKDConfig, LSKDConfig, Profile, load_profile
from edgekd.data import load_data
from edgekd.losses import CrossEntropyObjective, DistillationObjective
from edgekd.models import create_model
from edgekd.stages.teacher import TeacherSource, default_cache_dir, obtain_teacher
from edgekd.train import TrainPlan, _bf16_supported, accuracy, fit, seed_everything

OUT = Path(__file__).resolve().parent / "out" / "distill_losses.json"
VAL_PER_CLASS = 500  # 5,000 validation images for Fashion-MNIST's 10 classes


def candidates(profile: Profile, quick: bool) -> dict[str, list[DistillConfig | None]]:
    """Per loss, the settings tried on validation; the paper's default first (it wins ties).
    A loss with one setting is not trained on the validation split: there is nothing to choose.
    The grid is small because each setting costs a full training run on a shared 2-core CPU."""
    base = profile.distill.model_dump(exclude={"loss", "temperature", "alpha", "dkd", "lskd", "hint"})
    kd = [DistillConfig(**base, loss="kd", temperature=4.0, alpha=0.9)]  # the profile's KD since the start
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


def stratified_split(dataset: Dataset, per_class: int, seed: int) -> tuple[Subset, Subset]:
    """(train minus validation, validation): `per_class` images of every class, drawn with `seed`."""
    labels = torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))]) \
        if not hasattr(dataset, "tensors") else dataset.tensors[1]
    generator = torch.Generator().manual_seed(seed)
    val = []
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        val += members[torch.randperm(len(members), generator=generator)[:per_class]].tolist()
    held = set(val)
    return Subset(dataset, [i for i in range(len(dataset)) if i not in held]), Subset(dataset, sorted(val))


class WithTeacherLogits(Dataset):
    """Each item's label carries the frozen teacher's logits for that image: [label, logits...].

    Distillation trains without augmentation and the teacher is frozen in eval mode, so its logits
    for an image never change: computing them once (as stages/distill.py's forward pass does, in
    bf16 autocast) instead of in every step of every run halves each run's cost and changes nothing
    but bf16 rounding."""

    def __init__(self, dataset: Dataset, teacher: nn.Module, fast_math: bool = True):
        self.dataset = dataset
        chunks = []
        teacher.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast_math and _bf16_supported(torch.device("cpu"))):
            for x, _ in DataLoader(dataset, batch_size=512):
                chunks.append(teacher(x).float())
        self.logits = torch.cat(chunks)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        return x, torch.cat([torch.tensor([float(y)]), self.logits[index]])


class LabelsOf(nn.Module):
    """Cross-entropy on the labels of a `WithTeacherLogits` item (the labels-only student)."""

    def __init__(self):
        super().__init__()
        self.inner = CrossEntropyObjective()

    def trainable(self, model: nn.Module) -> nn.Module:
        return model

    def forward(self, output, x, y):
        return self.inner(output, x, y[:, 0].long())


class PrecomputedDistillation(DistillationObjective):
    """The profile's distillation loss, reading the teacher's logits from the batch."""

    def forward(self, output, x, y):
        return self.response(output, y[:, 1:], y[:, 0].long())


def train_student(profile: Profile, data, teacher, train: WithTeacherLogits, config: DistillConfig | None, seed: int):
    """The profile's student from seed `seed`, trained like stages/distill.py with `config`'s loss."""
    seed_everything(seed)  # same initial weights for every loss
    student = create_model(profile.student.arch, data.num_classes, data.input_shape, profile.student.width)
    cfg = profile.distill
    plan = TrainPlan(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                     batch_size=profile.data.batch_size, seed=seed, workers=profile.data.workers, fast_math=True)
    objective = LabelsOf() if config is None else PrecomputedDistillation(teacher, config)
    fit(student, objective, train, plan, label=f"{describe(config)} seed {seed}")
    return student


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run(profile_name: str, seeds: list[int], cache_dir: Path, quick: bool, out: Path) -> dict:
    started = time.time()
    profile = load_profile(profile_name)
    data = load_data(None, profile.data, seed=profile.seed)
    teacher = obtain_teacher(TeacherSource(), profile, data, cache_dir)
    per_class = max(1, min(VAL_PER_CLASS, len(data.train) // (5 * data.num_classes)))
    fit_split, val_split = stratified_split(data.train, per_class, profile.seed)
    train_set = WithTeacherLogits(data.train, teacher.model)
    fit_set = Subset(train_set, fit_split.indices)
    grid = candidates(profile, quick)

    selection: dict[str, list[dict]] = {}
    chosen: dict[str, DistillConfig | None] = {}
    for name, options in grid.items():
        selection[name] = []
        for config in options if len(options) > 1 else []:
            t0 = time.time()
            student = train_student(profile, data, teacher.model, fit_set, config, seeds[0])
            top1 = accuracy(student, val_split)
            selection[name].append({"setting": describe(config), "val_top1": top1, "seconds": time.time() - t0,
                                    "config": None if config is None else config.model_dump(mode="json")})
            print(f"select {name:<6} {describe(config):<60} val top-1 {100 * top1:.2f}%", flush=True)
        best = max(range(len(selection[name])), key=lambda i: (selection[name][i]["val_top1"], -i), default=0)
        chosen[name] = options[best]

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
            row["top1_mean"], row["top1_std"] = _mean_std(row["top1"])
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
            "dataset": {"name": data.name, "train": len(data.train), "fit": len(fit_split), "val": len(val_split),
                        "test": len(data.test)},
            "teacher": {"origin": teacher.origin, "test_top1": teacher_top1},
            "student": f"{profile.student.arch} w{profile.student.width:g}",
            "schedule": {"epochs": profile.distill.epochs, "lr": profile.distill.lr,
                         "weight_decay": profile.distill.weight_decay, "batch_size": profile.data.batch_size},
            "selection": {"seed": seeds[0], "results": selection},
            "seeds_done": done,
            "rows": rows,
            "verdict": {"best": best, "gap_closed": rows[best]["gap_closed"], "goal": 0.5,
                        "pass": (rows[best]["gap_closed"] or 0) >= 0.5, "seeds": len(done)},
            "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                     "threads": torch.get_num_threads()},
            "seconds": time.time() - started,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n")
        return payload

    for index, seed in enumerate(seeds):
        for name, config in chosen.items():
            t0 = time.time()
            student = train_student(profile, data, teacher.model, train_set, config, seed)
            rows[name]["top1"].append(accuracy(student, data.test))
            rows[name]["seconds"].append(time.time() - t0)
            print(f"seed {seed}: {name:<6} test top-1 {100 * rows[name]['top1'][-1]:.2f}% "
                  f"({rows[name]['seconds'][-1]:.0f} s)", flush=True)
        payload = summary(seeds[: index + 1])
    return payload


def print_report(payload: dict) -> None:
    ds = payload["dataset"]
    print(f"\n{ds['name']}: selection trains on {ds['fit']} and validates on {ds['val']} (stratified, seeded); "
          f"reported students train on {ds['train']} and are measured on {ds['test']} test images; "
          f"student {payload['student']}, {payload['schedule']['epochs']} epochs each\n")
    print("| loss | validation top-1 % per setting (seed %d) |" % payload["selection"]["seed"])
    print("|---|---|")
    for name, results in payload["selection"]["results"].items():
        if results:
            print(f"| {name} | " + "; ".join(f"{r['setting']}: {100 * r['val_top1']:.2f}" for r in results) + " |")
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
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated student seeds; the first also selects [default: 0,1,2]")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"teacher cache [default: EDGEKD_CACHE_DIR or {default_cache_dir()}]")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON output [default: {OUT}]")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        parser.error("--seeds: give at least one seed, each once")
    profile = args.profile or ("smoke" if args.quick else "default")
    payload = run(profile, seeds, args.cache_dir or default_cache_dir(), args.quick, args.out)
    print_report(payload)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
