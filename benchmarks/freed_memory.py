"""Training speed with glibc's own memory thresholds and with edgekd's (`edgekd.training.memory`).

Each measurement is a fresh process that runs the real `edgekd.training.loop.fit` of the default profile:
the teacher stage (`edgekd_resnet_fc`, labels) or the distillation (`edgekd_cnn_fc` from that
teacher through its logits table), on a seeded, stratified 15,360-image slice of Fashion-MNIST's
training split, batch 256, with the profile's augmentation and `torch.compile`. It fits one epoch
to compile and warm up, then times a second epoch (60 steps) and counts its page faults. An
"untouched" process leaves glibc's thresholds as they are; an "edgekd" one raises them as
every `fit` does. The two alternate (the order flips every pair), so a noisy spell lands on both.
Precisions: fp32 (a CPU without bf16) and, where this CPU has native bf16, bf16 autocast.

    python benchmarks/freed_memory.py             # 3 pairs of each
    python benchmarks/freed_memory.py --pairs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out" / "freed_memory.json"
STEPS = 60

ONE = """
import json, resource, sys, time, torch
from edgekd.training import memory
if {setting!r} == "untouched":
    memory._applied = False  # keep_freed_memory() then leaves glibc's thresholds alone
from edgekd.config import load_profile
from edgekd.data import augmentations, load_fashion_mnist, stratified_subset, with_validation
from edgekd.training.losses import CrossEntropyObjective, DistillationObjective
from edgekd.models import create_model
from edgekd.training.teacher_logits import TeacherLogits
from edgekd.training.loop import TrainPlan, fit
torch.set_num_threads(2)
profile = load_profile("default")
data = with_validation(load_fashion_mnist(), profile.data.val_fraction, 0)
train = stratified_subset(data.train, {images}, 0)
teacher = create_model(profile.teacher.arch, 10, (1, 28, 28), 1.0)
if {role!r} == "teacher":
    model, objective, cfg = teacher, CrossEntropyObjective(), profile.teacher
else:
    model = create_model(profile.student.arch, 10, (1, 28, 28), profile.student.width)
    cfg = profile.distill
    objective = DistillationObjective(teacher, cfg, TeacherLogits(teacher, train, 10))
plan = TrainPlan(epochs=1, lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=256, seed=0,
                 augment=augmentations(profile.data, data), fast_math={bf16!r}, compile=True)
fit(model, objective, train, plan, label="warm-up")
faults, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
fit(model, objective, train, plan, label="timed")
seconds = time.perf_counter() - started
print(json.dumps({{"ms_per_step": 1000 * seconds / {steps},
                  "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / {steps}}}))
"""


def measure(role: str, bf16: bool, setting: str) -> dict:
    code = ONE.format(setting=setting, role=role, bf16=bf16, images=STEPS * 256, steps=STEPS)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "EDGEKD_QUIET": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{role} {setting}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    import torch

    from edgekd.benchmarking import host, write_results
    from edgekd.training.loop import mixed_precision_dtype

    precisions = [False] + ([True] if mixed_precision_dtype(torch.device("cpu")) is torch.bfloat16 else [])
    rows = []
    for role in ("teacher", "student"):
        for bf16 in precisions:
            runs = {"untouched": [], "edgekd": []}
            for pair in range(args.pairs):
                for setting in (("untouched", "edgekd") if pair % 2 == 0 else ("edgekd", "untouched")):
                    runs[setting].append(measure(role, bf16, setting))
            med = {k: statistics.median(r["ms_per_step"] for r in v) for k, v in runs.items()}
            row = {"stage": "teacher (edgekd_resnet_fc)" if role == "teacher" else "distillation (edgekd_cnn_fc)",
                   "precision": "bf16" if bf16 else "fp32",
                   "untouched_ms": round(med["untouched"], 1), "edgekd_ms": round(med["edgekd"], 1),
                   "speedup": round(med["untouched"] / med["edgekd"], 3),
                   "untouched_faults": round(statistics.median(r["faults_per_step"] for r in runs["untouched"])),
                   "edgekd_faults": round(statistics.median(r["faults_per_step"] for r in runs["edgekd"])),
                   "runs": runs}
            rows.append(row)
            print(f"{row['stage']:28s} {row['precision']}: untouched {row['untouched_ms']:6.1f} ms/step "
                  f"({row['untouched_faults']} faults/step), edgekd {row['edgekd_ms']:6.1f} ms/step "
                  f"({row['edgekd_faults']} faults/step): {row['speedup']:.2f}x", flush=True)
    write_results(OUT.name, {"cpu": host()["cpu"], "threads": 2, "pairs": args.pairs, "steps": STEPS, "rows": rows},
                  out=OUT.parent)
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
