"""The compression ladder of one `edgekd compress --target host-cpu` run, beside what a user would do instead.

From one finished run folder (the default profile's, for the real numbers), all measured in one run:

  a) the ladder: teacher FP32 -> distilled student -> pruned student -> INT8 QAT student, top-1 on
     the whole Fashion-MNIST test set computed from the run's ONNX files in ONNX Runtime;
  b) the usual alternatives applied to the same FP32 models (the pruned student, the QAT student's
     direct parent, and the distilled student): ONNX Runtime's quantize_static (QDQ, per-channel
     INT8 weights, UINT8 activations, MinMax calibration on the first 1024 training images, after
     quant_pre_process) and NNCF post-training quantization without fine-tuning (edgekd's own
     quantize_with_nncf on the run's checkpoint, the CPU scheme: zero point 0, unsigned post-ReLU tensors, same 1024 images);
  c) PASS/FAIL verdicts with their numbers, and the share of channels pruned;
  d) --standard: torchvision resnet18 and mobilenet_v3_large (random weights) at 1x3x224x224,
     FP32 ONNX vs INT8 QDQ made by edgekd's quantization path, ONNX Runtime batch 1.

Params and MACs come from the run's report.json (the INT8 rows: their FP32 graph's). Latency is
ONNX Runtime p50/p99 with 2 threads at batch 1 and 64, every model timed side by side in rotated
rounds in this one process. QLinearConv/Conv counts are read from ONNX Runtime's optimised graph:
a QDQ file whose convolutions did not become QLinearConv runs in FP32.

    python benchmarks/ladder.py --run-dir runs/<default-profile host-cpu run>        # minutes: quiet machine
    python benchmarks/ladder.py --run-dir /tmp/r1 --quick                           # short timing, no --standard
    python benchmarks/ladder.py --run-dir RUN --no-standard --out /tmp/ladder.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgekd.benchmarking import write_results
from edgekd.checkpoints import load_stage_model
from edgekd.config import ActivationScheme
from edgekd.data import load_fashion_mnist
from edgekd.export.onnx_file import INPUT_NAME, export_onnx
from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner, measure_side_by_side, open_session
from edgekd.stages.quantize import quantize_with_nncf, strip_to_qdq
from edgekd.training.loop import predict_onnx

OUT = Path(__file__).resolve().parent / "out" / "ladder.json"
BATCHES = (1, 64)
LADDER = (("teacher", "teacher FP32"), ("distill", "distilled student FP32"),
          ("prune", "pruned student FP32"), ("quantize", "INT8 QAT student"))
PARENTS = (("prune", "pruned"), ("distill", "distilled"))  # FP32 models the PTQ baselines start from
STANDARD = ("resnet18", "mobilenet_v3_large")
IMAGENET = (3, 224, 224)
# time_calls settings per round, and rounds (samples pooled over rounds)
TIMING = {"full": ({"warmup": 10, "min_runs": 50, "max_runs": 200, "max_seconds": 2.0}, 5),
          "quick": ({"warmup": 3, "min_runs": 20, "max_runs": 20, "max_seconds": 1.0}, 1)}
QAT_MAX_LOSS = 0.5  # points of top-1
PRUNE_MIN_SPEEDUP = 1.6  # batch 64, distill.onnx p50 / prune.onnx p50
STANDARD_MIN_SPEEDUP = 2.5  # resnet18, FP32 p50 / INT8 p50 at batch 1
MOBILENET_REASON = ("its depthwise convolutions and hardswish/squeeze-excite blocks have little arithmetic for "
                    "INT8 to speed up; its time is memory-bound")


def conv_ops(path: Path, threads: int) -> dict[str, int]:
    """QLinearConv vs float convolutions (Conv, FusedConv, NCHWc Conv) in ONNX Runtime's optimised graph,
    and how many of the float ones feed a hardswish (ORT: HardSigmoid + Mul) rather than a QuantizeLinear."""
    import onnx

    with tempfile.TemporaryDirectory() as folder:
        optimized = Path(folder) / "optimized.onnx"
        open_session(path, threads, optimized_path=optimized)
        nodes = list(onnx.load(str(optimized)).graph.node)
    consumers: dict[str, set[str]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    floats = [n for n in nodes if n.op_type.endswith("Conv") and n.op_type != "QLinearConv"]
    return {"QLinearConv": sum(n.op_type == "QLinearConv" for n in nodes), "Conv": len(floats),
            "Conv_into_hardswish": sum(bool(consumers.get(n.output[0], set()) & {"HardSigmoid", "HardSwish"})
                                       for n in floats)}


# ---------------------------------------------------------------- the two post-training baselines


def ort_ptq(source: Path, path: Path, images: np.ndarray, batch: int = 64) -> Path:
    """ONNX Runtime's static QDQ quantization, as its documentation has a user do it."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class TrainingImages(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT_NAME: images[i:i + batch]} for i in range(0, len(images), batch)])

        def get_next(self):
            return next(self.batches, None)

    prepared = path.with_suffix(".prepared.onnx")
    quant_pre_process(str(source), str(prepared))
    quantize_static(str(prepared), str(path), TrainingImages(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return path


def nncf_ptq(checkpoint: Path, path: Path, calibration, samples: int, example: torch.Tensor, opset: int) -> Path:
    """edgekd's own quantizer without QAT: fold BatchNorm, NNCF calibration, strip to QDQ, export."""
    model = load_stage_model(checkpoint.parent.parent, checkpoint.stem)
    quantized = quantize_with_nncf(model, calibration, samples, ActivationScheme.SYMMETRIC)
    return export_onnx(strip_to_qdq(quantized, example), example, path, opset)


# ---------------------------------------------------------------- a), b), c): the run's models


def _read_run(run_dir: Path) -> tuple[dict, dict, dict[str, dict]]:
    missing = [p for p in ("report.json", "config.json", "checkpoints/distill.pt", "checkpoints/prune.pt")
               if not (run_dir / p).is_file()]
    if missing:
        sys.exit(f"{run_dir}: not a finished edgekd run folder (missing {', '.join(missing)})")
    report = json.loads((run_dir / "report.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    lacking = [name for name, _ in LADDER if name not in stages]
    if lacking:
        sys.exit(f"{run_dir}: the run has no {', '.join(lacking)} stage (the ladder needs teacher, distill, prune "
                 f"and quantize: the default profile's)")
    if report["dataset"]["name"] != "fashion-mnist":
        sys.exit(f"{run_dir}: the run used {report['dataset']['name']}; this benchmark measures on Fashion-MNIST")
    return report, config, stages


def _channels(run_dir: Path, prune: dict) -> dict:
    """Share of channels pruned: exact (conv output channels in the two checkpoints) and from report.json."""
    def conv_channels(name: str) -> int:
        model = load_stage_model(run_dir, name)
        return sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))

    d = prune["details"]
    before, after = conv_channels("distill"), conv_channels("prune")
    return {"conv_channels_before": before, "conv_channels_after": after, "channels_pruned": 1 - after / before,
            "macs_before": d["macs_before"], "macs_after": d["macs_after"],
            "params_before": d["params_before"], "params_after": d["params_after"],
            "macs_removed": 1 - d["macs_after"] / d["macs_before"],
            "params_removed": 1 - d["params_after"] / d["params_before"],
            # conv MACs scale with channels in x channels out: what share of channels the MAC drop implies
            "channels_pruned_implied_by_macs": 1 - (d["macs_after"] / d["macs_before"]) ** 0.5}


def run_ladder(run_dir: Path, threads: int, calibration_samples: int, mode: str, folder: Path) -> dict:
    report, config, stages = _read_run(run_dir)
    opset = config["profile"]["export"]["opset"]
    data = load_fashion_mnist()  # the whole test set, whatever slices the run trained on
    example = torch.stack([data.test[i][0] for i in range(256)])
    calibration = torch.stack([data.train[i][0] for i in range(calibration_samples)]).numpy()
    rows: dict[str, dict] = {}
    for key, label in LADDER:
        record = stages[key]
        rows[key] = {"model": label, "from": "run", "onnx": run_dir / record["onnx"],
                     "params": record["params"], "macs": record["macs"]}
    rows["quantize"]["from"] = f"run ({stages['quantize']['details'].get('method', '?')}, " \
                               f"{stages['quantize']['details'].get('scheme', '?')})"
    for parent, name in PARENTS:
        source = rows[parent]
        print(f"quantizing the {name} student: ONNX Runtime PTQ, NNCF PTQ", flush=True)
        rows[f"{parent}_ort_ptq"] = {
            "model": f"{name} + ORT PTQ", "from": f"stages/{parent}.onnx", "params": source["params"],
            "macs": source["macs"],
            "onnx": ort_ptq(source["onnx"], folder / f"{parent}.ort_ptq.onnx", calibration)}
        rows[f"{parent}_nncf_ptq"] = {
            "model": f"{name} + NNCF PTQ", "from": f"checkpoints/{parent}.pt", "params": source["params"],
            "macs": source["macs"],
            "onnx": nncf_ptq(run_dir / "checkpoints" / f"{parent}.pt", folder / f"{parent}.nncf_ptq.onnx",
                             data.train, calibration_samples, example, opset)}
    for key, row in rows.items():
        row["top1"] = predict_onnx(OnnxRuntimeRunner(row["onnx"], threads), data.test)
        row["size_bytes"] = row["onnx"].stat().st_size
        row["conv_ops"] = conv_ops(row["onnx"], threads)
        print(f"{row['model']:<28} top-1 {100 * row['top1']:.2f}%", flush=True)
    timing, rounds = TIMING[mode]
    latencies = measure_side_by_side({k: r["onnx"] for k, r in rows.items()}, threads, BATCHES, timing, rounds)
    for key, row in rows.items():
        row["latency_ms"] = {f"batch{b}": lat.as_dict() for b, lat in latencies[key].items()}
        row["onnx"] = str(row["onnx"].relative_to(run_dir)) if row["onnx"].is_relative_to(run_dir) else None
    warnings = []
    if config["profile"]["name"] != "default":
        warnings.append(f"the run used the '{config['profile']['name']}' profile; the issue's numbers are the "
                        f"default profile's")
    if config["target"]["name"] != "host-cpu":
        warnings.append(f"the run targeted {config['target']['name']}, not host-cpu (its INT8 scheme may differ)")
    return {"run_dir": str(run_dir), "profile": config["profile"]["name"], "target": config["target"]["name"],
            "warnings": warnings,
            "test_images": len(data.test), "calibration_images": calibration_samples,
            "rows": rows, "channels": _channels(run_dir, stages["prune"]), "verdicts": _verdicts(rows),
            "onnxruntime": latencies["teacher"][1].runtime}


def _verdicts(rows: dict) -> list[dict]:
    top1 = {k: 100 * r["top1"] for k, r in rows.items()}
    p50 = lambda key, batch: rows[key]["latency_ms"][f"batch{batch}"]["p50"]  # noqa: E731
    qat = top1["quantize"]
    speedup = p50("distill", 64) / p50("prune", 64)
    return [
        {"name": "QAT student >= ORT PTQ and >= NNCF PTQ (same parent: pruned)",
         "pass": qat >= top1["prune_ort_ptq"] and qat >= top1["prune_nncf_ptq"],
         "detail": f"QAT {qat:.2f}% vs ORT PTQ {top1['prune_ort_ptq']:.2f}%, NNCF PTQ {top1['prune_nncf_ptq']:.2f}%"},
        {"name": f"QAT loses <= {QAT_MAX_LOSS} points vs its FP32 parent (pruned)",
         "pass": top1["prune"] - qat <= QAT_MAX_LOSS,
         "detail": f"pruned FP32 {top1['prune']:.2f}% -> QAT {qat:.2f}% ({qat - top1['prune']:+.2f} points)"},
        {"name": f"QAT loses <= {QAT_MAX_LOSS} points vs the distilled student",
         "pass": top1["distill"] - qat <= QAT_MAX_LOSS,
         "detail": f"distilled FP32 {top1['distill']:.2f}% -> QAT {qat:.2f}% ({qat - top1['distill']:+.2f} points)"},
        {"name": f"pruning speed-up at batch 64 >= {PRUNE_MIN_SPEEDUP}x (distill.onnx p50 / prune.onnx p50)",
         "pass": speedup >= PRUNE_MIN_SPEEDUP,
         "detail": f"{p50('distill', 64):.3f} ms / {p50('prune', 64):.3f} ms = {speedup:.2f}x "
                   f"(batch 1: {p50('distill', 1) / p50('prune', 1):.2f}x)"},
    ]


# ---------------------------------------------------------------- d) standard ImageNet-size models


def run_standard(threads: int, calibration_samples: int, mode: str, folder: Path, opset: int) -> dict:
    import torchvision
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(0)
    example = torch.randn(1, *IMAGENET, generator=generator)
    calibration = TensorDataset(torch.randn(calibration_samples, *IMAGENET, generator=generator),
                                torch.zeros(calibration_samples, dtype=torch.long))
    paths, models = {}, {}
    for name in STANDARD:
        print(f"{name}: FP32 export, INT8 (NNCF, {calibration_samples} random calibration images)", flush=True)
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        paths[f"{name}_fp32"] = export_onnx(model, example, folder / f"{name}.fp32.onnx", opset)
        quantized = quantize_with_nncf(model, calibration, calibration_samples, ActivationScheme.SYMMETRIC,
                                       batch_size=16)
        paths[f"{name}_int8"] = export_onnx(strip_to_qdq(quantized, example), example,
                                            folder / f"{name}.int8.onnx", opset)
        models[name] = {"fp32_size_bytes": paths[f"{name}_fp32"].stat().st_size,
                        "int8_size_bytes": paths[f"{name}_int8"].stat().st_size,
                        "int8_conv_ops": conv_ops(paths[f"{name}_int8"], threads),
                        "fp32_conv_ops": conv_ops(paths[f"{name}_fp32"], threads)}
    timing, rounds = TIMING[mode]
    latencies = measure_side_by_side(paths, threads, (1,), timing, rounds)
    for name, row in models.items():
        fp32, int8 = latencies[f"{name}_fp32"][1], latencies[f"{name}_int8"][1]
        row.update({"fp32_ms": fp32.as_dict(), "int8_ms": int8.as_dict(), "speedup": fp32.p50 / int8.p50})
    return {"input_shape": [1, *IMAGENET], "calibration_images": calibration_samples, "models": models,
            "verdict": {"name": f"resnet18 INT8 >= {STANDARD_MIN_SPEEDUP}x faster than FP32",
                        "pass": models["resnet18"]["speedup"] >= STANDARD_MIN_SPEEDUP,
                        "speedup": models["resnet18"]["speedup"]}}


# ---------------------------------------------------------------- output


def _ops(row: dict) -> str:
    ops = row["conv_ops"]
    return f"{ops['QLinearConv']}/{ops['Conv']}"


def print_report(payload: dict) -> None:
    ladder = payload["ladder"]
    rows = ladder["rows"]
    print(f"\nrun {ladder['run_dir']} (profile {ladder['profile']}, target {ladder['target']}); "
          f"top-1 on {ladder['test_images']} Fashion-MNIST test images; {ladder['onnxruntime']}\n")
    print("| model | from | top-1 % | params | MACs | ONNX KB | QLinearConv/Conv | p50 b1 ms | p99 b1 ms "
          "| p50 b64 ms | p99 b64 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, row in rows.items():
        b1, b64 = row["latency_ms"]["batch1"], row["latency_ms"]["batch64"]
        name = f"**{row['model']}**" if key == "quantize" else row["model"]
        print(f"| {name} | {row['from']} | {100 * row['top1']:.2f} | {row['params']:,} | {row['macs'] / 1e6:.2f}M "
              f"| {row['size_bytes'] / 1024:.1f} | {_ops(row)} | {b1['p50']:.3f} | {b1['p99']:.3f} "
              f"| {b64['p50']:.3f} | {b64['p99']:.3f} |")
    partial = [f"{r['model']} ({r['conv_ops']['Conv']})" for k, r in rows.items()
               if k not in ("teacher", "distill", "prune") and r["conv_ops"]["Conv"]]
    if partial:
        print(f"\nnote: float convolutions left in ONNX Runtime's optimised INT8 graph: {', '.join(partial)}")
    for warning in ladder["warnings"]:
        print(f"note: {warning}")
    c = ladder["channels"]
    print(f"\nchannels pruned: {100 * c['channels_pruned']:.1f}% of conv output channels "
          f"({c['conv_channels_before']} -> {c['conv_channels_after']}); report.json: MACs "
          f"{c['macs_before']:,} -> {c['macs_after']:,} (-{100 * c['macs_removed']:.1f}%), params "
          f"{c['params_before']:,} -> {c['params_after']:,} (-{100 * c['params_removed']:.1f}%), "
          f"i.e. {100 * c['channels_pruned_implied_by_macs']:.1f}% of channels by the MAC drop\n")
    for verdict in ladder["verdicts"]:
        print(f"{verdict['name']}: {verdict['detail']}: {'PASS' if verdict['pass'] else 'FAIL'}")
    standard = payload.get("standard")
    if standard is None:
        return
    print(f"\nstandard models at {'x'.join(map(str, standard['input_shape']))}, random weights, batch 1, "
          f"INT8 = edgekd's NNCF path ({standard['calibration_images']} random calibration images)\n")
    print("| model | FP32 p50 ms | FP32 p99 ms | INT8 p50 ms | INT8 p99 ms | speed-up | INT8 QLinearConv/Conv "
          "| FP32 MB | INT8 MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in standard["models"].items():
        print(f"| {name} | {m['fp32_ms']['p50']:.2f} | {m['fp32_ms']['p99']:.2f} | {m['int8_ms']['p50']:.2f} "
              f"| {m['int8_ms']['p99']:.2f} | {m['speedup']:.2f}x | {_ops({'conv_ops': m['int8_conv_ops']})} "
              f"| {m['fp32_size_bytes'] / 2**20:.1f} | {m['int8_size_bytes'] / 2**20:.1f} |")
    verdict = standard["verdict"]
    print(f"\n{verdict['name']}: {verdict['speedup']:.2f}x: {'PASS' if verdict['pass'] else 'FAIL'}")
    mobilenet = standard["models"]["mobilenet_v3_large"]["speedup"]
    print(f"mobilenet_v3_large INT8 vs FP32: {mobilenet:.2f}x")
    if mobilenet < STANDARD_MIN_SPEEDUP:
        ops = standard["models"]["mobilenet_v3_large"]["int8_conv_ops"]
        total = ops["QLinearConv"] + ops["Conv"]
        print(f"below {STANDARD_MIN_SPEEDUP}x: {MOBILENET_REASON}. Measured here as well: {ops['Conv']} of its "
              f"{total} convolutions stayed float in ONNX Runtime's optimised INT8 graph "
              f"({ops['Conv_into_hardswish']} of them feed a hardswish or hard-sigmoid, so no QuantizeLinear follows "
              f"the Conv for ORT to fuse into QLinearConv), and those pay for the QuantizeLinear/DequantizeLinear "
              f"around them on top of FP32 arithmetic")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True,
                        help="a finished `edgekd compress --target host-cpu` run folder (default profile)")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("EDGEKD_BENCH_QUICK") == "1",
                        help="one short timing round, and no --standard section unless asked for")
    parser.add_argument("--standard", action=argparse.BooleanOptionalAction, default=None,
                        help="also time resnet18 and mobilenet_v3_large at 224x224, FP32 vs INT8 "
                             "[default: on; off with --quick]")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads [default: 2]")
    parser.add_argument("--calibration", type=int, default=1024,
                        help="training images calibrating both PTQ baselines [default: 1024]")
    parser.add_argument("--standard-calibration", type=int, default=None,
                        help="random images calibrating the --standard INT8 models [default: 64; 8 with --quick]")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON output [default: {OUT}]")
    args = parser.parse_args(argv)
    from edgekd.quiet import quiet_libraries

    quiet_libraries()
    mode = "quick" if args.quick else "full"
    standard = args.standard if args.standard is not None else not args.quick
    run_dir = args.run_dir.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        payload = {"mode": mode, "threads": args.threads, "timing": dict(zip(("per_round", "rounds"), TIMING[mode]))}
        payload["ladder"] = run_ladder(run_dir, args.threads, args.calibration, mode, folder)
        if standard:
            calibration = args.standard_calibration or (8 if args.quick else 64)
            opset = json.loads((run_dir / "config.json").read_text())["profile"]["export"]["opset"]
            payload["standard"] = run_standard(args.threads, calibration, mode, folder, opset)
    print_report(payload)
    write_results(args.out.name, payload, out=args.out.parent)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
