"""Where an ONNX file's time goes in ONNX Runtime: per-node kernel time from its own profiler.

Runs the file 20 times to warm up, then 100 times with `enable_profiling`, and prints each node of
ONNX Runtime's optimised graph with its median kernel time, slowest first (2 threads, random
inputs of the file's own input shape at the given batch).

    python benchmarks/ort_profile.py RUN/student.int8.onnx --batch 64
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime


def profile(path: str, batch: int, threads: int = 2, runs: int = 100) -> list[tuple[float, str, str]]:
    def session(profiling: bool, prefix: str = ""):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        if profiling:
            options.enable_profiling = True
            options.profile_file_prefix = prefix
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    warm = session(False)
    shape = [batch, *[d if isinstance(d, int) else 1 for d in warm.get_inputs()[0].shape[1:]]]
    feed = {warm.get_inputs()[0].name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    for _ in range(20):
        warm.run(None, feed)
    with tempfile.TemporaryDirectory() as folder:
        timed = session(True, os.path.join(folder, "profile"))
        for _ in range(runs):
            timed.run(None, feed)
        events = json.loads(open(timed.end_profiling()).read())
    times = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[(event["args"].get("op_name", ""), event["name"][:-len("_kernel_time")])].append(event["dur"])
    return sorted(((float(np.median(v)), op, name) for (op, name), v in times.items()), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = profile(args.onnx, args.batch, args.threads)
    print(f"{args.onnx}, batch {args.batch}: sum of node medians {sum(r[0] for r in rows):.0f} us")
    for micros, op, name in rows:
        print(f"{micros:9.0f} us  {op:20s} {name}")


if __name__ == "__main__":
    main()
