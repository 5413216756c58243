"""The distilled students on a real GPU, with PyTorch alone (no TensorRT there).

What a CUDA machine without TensorRT can say about the `server-gpu`-class budget: PyTorch eager
latency of each stage's model (TorchScript files exported from a run folder, so nothing of edgekd
needs installing on the GPU machine), FP32 and FP16, at batch 1 and 64, CUDA-event timed.

    python benchmarks/gpu_latency.py export RUN_DIR OUT_DIR     # here: write OUT_DIR/{teacher,distill,prune}.ts
    python benchmarks/gpu_latency.py measure OUT_DIR            # on the GPU machine: prints a table, writes gpu_latency.json
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch


def export(run_dir: Path, out: Path) -> None:
    from edgekd.checkpoints import load_stage_model
    from edgekd.models import load_teacher

    out.mkdir(parents=True, exist_ok=True)
    report = json.loads((run_dir / "report.json").read_text())
    shape = tuple(report["dataset"]["input_shape"])
    teacher_file = Path(report["stages"][0]["details"]["origin"].removeprefix("cache:"))
    models = {"teacher": load_teacher(str(teacher_file), len(report["dataset"]["classes"]), shape)[0]}
    for stage in ("distill", "prune"):
        models[stage] = load_stage_model(run_dir, stage)
    example = torch.zeros(1, *shape)
    for name, model in models.items():
        torch.jit.trace(model.eval(), example).save(str(out / f"{name}.ts"))
    (out / "shape.json").write_text(json.dumps({"input_shape": shape, "report": {
        s["name"]: {"accuracy": s["accuracy"], "macs": s["macs"], "params": s["params"]} for s in report["stages"]}}))


@torch.no_grad()
def measure(folder: Path) -> None:
    meta = json.loads((folder / "shape.json").read_text())
    shape = tuple(meta["input_shape"])
    device = torch.device("cuda")
    rows = []
    for name in ("teacher", "distill", "prune"):
        model = torch.jit.load(str(folder / f"{name}.ts"), map_location=device).eval()
        for dtype in (torch.float32, torch.float16):
            typed = model.to(dtype)
            for batch in (1, 64):
                x = torch.randn(batch, *shape, device=device, dtype=dtype)
                for _ in range(50):
                    typed(x)
                times = []
                for _ in range(300):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    typed(x)
                    end.record()
                    torch.cuda.synchronize()
                    times.append(start.elapsed_time(end))
                times.sort()
                rows.append({"model": name, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
                             "p50_ms": statistics.median(times), "p99_ms": times[int(0.99 * len(times)) - 1],
                             **meta["report"][name]})
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| model | dtype | batch | p50 ms | p99 ms | MACs | top-1 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
              f"{r['macs'] / 1e6:.2f}M | {100 * r['accuracy']:.2f}% |")
    (folder / "gpu_latency.json").write_text(json.dumps(rows, indent=2))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    exporting = commands.add_parser("export", help="here: write OUT_DIR/{teacher,distill,prune}.ts from a run folder")
    exporting.add_argument("run_dir", type=Path)
    exporting.add_argument("out_dir", type=Path)
    measuring = commands.add_parser("measure", help="on the GPU machine: print a table, write OUT_DIR/gpu_latency.json")
    measuring.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    if args.command == "export":
        export(args.run_dir, args.out_dir)
    else:
        measure(args.out_dir)


if __name__ == "__main__":
    main()
