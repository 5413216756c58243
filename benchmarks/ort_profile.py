"""Where an ONNX file's time goes in ONNX Runtime: per-node kernel time from its own profiler.

Runs the file 20 times to warm up, then 100 profiled times (edgekd's `node_samples`, the profile
the quantize stage uses to choose each layer's precision), and prints each node of ONNX Runtime's
optimised graph with its median kernel time, slowest first (random inputs of the file's own input
shape at the given batch).

    python benchmarks/ort_profile.py RUN/student.int8.onnx --batch 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


from edgekd.runtimes.onnxruntime import node_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    if not args.onnx.is_file():
        parser.error(f"{args.onnx}: no such file")
    if args.batch < 1 or args.threads < 1 or args.runs < 1:
        parser.error("--batch, --threads and --runs must be at least 1")
    samples = node_samples(args.onnx, args.threads, args.batch, args.runs, warmup=20)
    rows = sorted(((1000 * float(np.median(ms)), op, name) for name, (op, ms) in samples.items()), reverse=True)
    print(f"{args.onnx}, batch {args.batch}, {args.threads} threads: sum of node medians {sum(r[0] for r in rows):.0f} us")
    for micros, op, name in rows:
        print(f"{micros:9.0f} us  {op:20s} {name}")


if __name__ == "__main__":
    main()
