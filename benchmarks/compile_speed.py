"""torch.compile vs eager for the training steps of the default run, side by side.

Three steps, at the default profile's batch (256) on Fashion-MNIST-shaped inputs (1x28x28):
  teacher-train    edgekd_resnet, forward + backward + SGD step (the teacher stage)
  student-train    edgekd_cnn, the same (the distillation stage's student)
  teacher-infer    edgekd_resnet in eval mode under no_grad (the distillation stage's teacher)
Each step is built twice from the same weights, eager and `edgekd.training.loop.CompiledOrEager` (what
`compile = true` in [teacher] / [distill] uses), and the two are timed in alternating rounds in
this one process (2 threads), so a noisy host moves both alike. The compile time is the first
compiled call (forward and backward graphs); the README's table comes from the default command.

    python benchmarks/compile_speed.py                 # ~3 min on 2 quiet cores
    python benchmarks/compile_speed.py --rounds 3 --steps 5
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
from edgekd.models import create_model
from edgekd.training.loop import CompiledOrEager


def train_step(model, forward):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    model.train()

    def step(x, y):
        loss = torch.nn.functional.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def infer_step(model, forward):
    model.eval()

    def step(x, _y):
        with torch.no_grad():
            forward(x)

    return step


CASES = {
    "teacher-train": ("edgekd_resnet", train_step),
    "student-train": ("edgekd_cnn", train_step),
    "teacher-infer": ("edgekd_resnet", infer_step),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (args.batch,), generator=generator)
    results = {}
    for case, (arch, make) in CASES.items():
        torch.manual_seed(0)
        eager_model = create_model(arch, 10, (1, 28, 28))
        compiled_model = copy.deepcopy(eager_model)
        eager = make(eager_model, eager_model)
        compiled = make(compiled_model, CompiledOrEager(compiled_model, case))
        started = time.perf_counter()
        compiled(x, y)
        compile_seconds = time.perf_counter() - started
        eager(x, y)
        times = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            for name, step in (("eager", eager), ("compiled", compiled)):
                started = time.perf_counter()
                for _ in range(args.steps):
                    step(x, y)
                times[name].append((time.perf_counter() - started) / args.steps * 1000)
        eager_ms, compiled_ms = statistics.median(times["eager"]), statistics.median(times["compiled"])
        results[case] = {"eager_ms": round(eager_ms, 1), "compiled_ms": round(compiled_ms, 1),
                         "speedup": round(eager_ms / compiled_ms, 2), "compile_s": round(compile_seconds, 1),
                         "rounds_ms": times}
        print(f"{case:14s} eager {eager_ms:6.1f} ms  compiled {compiled_ms:6.1f} ms  "
              f"{eager_ms / compiled_ms:.2f}x  (first compiled call {compile_seconds:.1f} s)", flush=True)
    write_results("compile_speed", results, out=REPO / "benchmarks" / "out")


if __name__ == "__main__":
    main()
