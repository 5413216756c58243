"""INT8 detector against its FP32 parent: mAP of the real ONNX files, ONNX Runtime latency, post-processing.

A teacher-free student (`student_spec`) is trained on labels on the synthetic clip-art set (or
loaded from `--checkpoint`), quantized with edgekd's path (`edgekd.detection.quantize`: NNCF INT8,
ASYMMETRIC scheme, optional short QAT chosen on val), exported, placed for ONNX Runtime, and
scored with `evaluate_runner` on the files. It also checks what one shared output scale would cost
(the class logits, box distances and centerness quantized as one tensor, against one scale each),
and times the two files in ONNX Runtime at batch 1, alternating call by call
(`edgekd.measure.latency.time_alternating`), and decode + NMS per image.

    OMP_NUM_THREADS=1 python benchmarks/detection_int8.py --json out.json
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgekd.benchmarking import write_results
from edgekd.detection.data import make_synthetic, read_coco
from edgekd.detection.evaluate import coco_map, evaluate, evaluate_runner, predict_detections
from edgekd.detection.model import build_detector, decode, load_detector, save_detector, student_spec
from edgekd.detection.quantize import calibration_array, export_fp32, export_int8, qat_detector, quantize_detector
from edgekd.detection.train import DetectionObjective, train_detector
from edgekd.measure.latency import time_alternating, time_calls
from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner
from edgekd.training.loop import TrainPlan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--checkpoint", type=Path, help="a saved student (save_detector); trained and saved here if absent")
    parser.add_argument("--calibration", type=int, default=256, help="training images for NNCF and the placement")
    parser.add_argument("--qat-epochs", type=int, default=2, help="0: post-training quantization only")
    parser.add_argument("--qat-lr", type=float, default=0.002)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=400, help="alternating timing steps per thread count")
    parser.add_argument("--json", type=Path, help="write the numbers here (with the host and the command)")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_synthetic(tmp / "data", args.images, image_size=args.size, seed=0).root
        splits = {s: read_coco(root / "coco" / s, root / "coco" / f"instances_{s}.json", image_size=args.size)[0]
                  for s in ("train", "val", "test")}
        classes = len(splits["train"].classes)
        report: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                        "images": {s: len(d) for s, d in splits.items()}}
        if args.checkpoint is not None and args.checkpoint.exists():
            model = load_detector(args.checkpoint)
            report["student"] = f"loaded {args.checkpoint}"
        else:
            torch.manual_seed(0)
            model = build_detector(student_spec(classes))
            t0 = time.perf_counter()
            train_detector(model, DetectionObjective(classes), splits["train"],
                           TrainPlan(epochs=args.epochs, lr=args.lr, weight_decay=5e-4, batch_size=16, seed=0), label="student")
            report["student"] = f"trained {args.epochs} epochs at lr {args.lr} in {time.perf_counter() - t0:.0f} s"
            if args.checkpoint is not None:
                save_detector(model, args.checkpoint)
        model.eval()
        example = splits["val"][0][0][None]
        calibration = calibration_array(splits["train"], args.calibration)
        rows = {"fp32 (PyTorch)": _scores(lambda s: evaluate(model, s), splits)}
        fp32_path = export_fp32(model, example, tmp / "fp32.onnx")
        rows["fp32 ONNX"] = _scores(lambda s: evaluate_runner(OnnxRuntimeRunner(fp32_path), s), splits)

        quantized = quantize_detector(model, splits["train"], args.calibration)
        rows["fake-quant PTQ"] = _scores(lambda s: evaluate(quantized, s), splits)
        chosen, report["qat"] = quantized, {"epochs": 0}
        if args.qat_epochs > 0:
            trained = copy.deepcopy(quantized)
            qat_detector(trained, model, splits["train"],
                         TrainPlan(epochs=args.qat_epochs, lr=args.qat_lr, weight_decay=0.0, batch_size=16, seed=0))
            rows["fake-quant QAT"] = _scores(lambda s: evaluate(trained, s), splits)
            keep = rows["fake-quant QAT"]["val"]["map50"] >= rows["fake-quant PTQ"]["val"]["map50"]  # val decides
            chosen = trained if keep else quantized
            report["qat"] = {"epochs": args.qat_epochs, "lr": args.qat_lr, "kept": "qat" if keep else "ptq"}
        int8_path = tmp / "int8.onnx"
        report["export"] = export_int8(chosen, example, int8_path, calibration)
        rows["INT8 ONNX"] = _scores(lambda s: evaluate_runner(OnnxRuntimeRunner(int8_path), s), splits)
        report["shared_scale_check"] = _shared_scale_check(fp32_path, calibration, splits, classes)
        report["mAP"] = rows
        report["sizes_kb"] = {"fp32": fp32_path.stat().st_size / 1024, "int8": int8_path.stat().st_size / 1024}
        report["latency"] = {t: _latency(fp32_path, int8_path, t, args.steps, example) for t in args.threads}
        report["decode_ms_per_image"] = _decode_time(fp32_path, splits["test"], classes)
    report["seconds"] = time.perf_counter() - started
    _print(report)
    if args.json:
        write_results(args.json.name, report, out=args.json.parent)


def _scores(score, splits) -> dict:
    return {s: score(splits[s]).as_dict() for s in ("val", "test")}


def _fake_quant(raw: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """UINT8 asymmetric quantize-dequantize of `raw` [B, C, H, W] with per-channel-group ranges
    `low`, `high` ([C], the same value across a group that shares a scale)."""
    low, high = np.minimum(low, 0.0), np.maximum(high, 0.0)
    scale = (high - low) / 255.0
    zero = np.round(-low / scale)
    shape = (1, -1, 1, 1)
    q = np.clip(np.round(raw / scale.reshape(shape)) + zero.reshape(shape), 0, 255)
    return ((q - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)


def _shared_scale_check(fp32_path: Path, calibration: np.ndarray, splits, classes: int) -> dict:
    """Test and val mAP of the FP32 file's output quantized to UINT8 with one scale over the whole
    [K + 5] tensor, against one scale per map (class logits, box distances, centerness: what the
    INT8 file does). Ranges are min/max over the calibration images, as the placement takes them."""
    runner = OnnxRuntimeRunner(fp32_path)
    cal = np.concatenate([runner.run(calibration[i:i + 32]) for i in range(0, len(calibration), 32)])
    lows, highs = cal.min(axis=(0, 2, 3)), cal.max(axis=(0, 2, 3))
    groups = {"classes": slice(0, classes), "boxes": slice(classes, classes + 4), "centerness": slice(classes + 4, classes + 5)}
    per_map_low, per_map_high = lows.copy(), highs.copy()
    ranges = {}
    for name, g in groups.items():
        per_map_low[g], per_map_high[g] = lows[g].min(), highs[g].max()
        ranges[name] = [float(lows[g].min()), float(highs[g].max())]
    shared_low, shared_high = np.full_like(lows, lows.min()), np.full_like(highs, highs.max())
    out: dict = {"ranges": ranges, "shared_range": [float(lows.min()), float(highs.max())]}
    for kind, (low, high) in {"one scale per map": (per_map_low, per_map_high),
                              "one shared scale": (shared_low, shared_high)}.items():
        out[kind] = {}
        for split in ("val", "test"):
            data = splits[split]
            found = predict_detections(lambda x: _fake_quant(runner.run(x.numpy()), low, high), data)
            out[kind][split] = coco_map(data.samples, found, classes).as_dict()
    return out


def _latency(fp32_path: Path, int8_path: Path, threads: int, steps: int, example: torch.Tensor) -> dict:
    """Batch 1, the two sessions called alternately (ABBA), `steps` calls each: medians and ratios."""
    runners = {"fp32": OnnxRuntimeRunner(fp32_path, threads), "int8": OnnxRuntimeRunner(int8_path, threads)}
    image = example.numpy()
    samples = time_alternating({n: (lambda r=r: r.run(image)) for n, r in runners.items()},
                               label=f"fp32 vs int8, {threads} thread(s)", warmup=20, steps=steps)
    fp32, int8 = np.asarray(samples["fp32"]), np.asarray(samples["int8"])
    return {"runtime": runners["int8"].description, "steps": steps,
            "fp32_ms_p50": float(np.median(fp32)), "int8_ms_p50": float(np.median(int8)),
            "fp32_over_int8": float(np.median(fp32) / np.median(int8)),
            "fp32_over_int8_per_step_p50": float(np.median(fp32 / int8))}


def _decode_time(fp32_path: Path, test, classes: int) -> dict:
    """decode + NMS of one image's raw output, over the test images in turn (PyTorch, 1 thread)."""
    runner = OnnxRuntimeRunner(fp32_path)
    raws = [torch.from_numpy(runner.run(test[i][0][None].numpy())) for i in range(len(test))]
    turn = iter(range(10 ** 9))
    samples = time_calls(lambda: decode(raws[next(turn) % len(raws)], classes), label="decode + NMS",
                         warmup=10, min_runs=len(raws), max_runs=20 * len(raws), max_seconds=10.0)
    kept = [len(decode(r, classes)[0]["scores"]) for r in raws]
    return {"p50": float(np.median(samples)), "p90": float(np.percentile(samples, 90)), "runs": len(samples),
            "detections_per_image_mean": float(np.mean(kept))}


def _print(report: dict) -> None:
    print(f"\n{report['student']}; images {report['images']}; QAT {report['qat']}")
    print(f"conv counts in ONNX Runtime's graph of the INT8 file: {report['export']['conv_counts']}")
    print("| model | val mAP50 | test mAP50 | test mAP@[.5:.95] |\n|---|---|---|---|")
    for name, row in report["mAP"].items():
        print(f"| {name} | {100 * row['val']['map50']:.1f} | {100 * row['test']['map50']:.1f} | {100 * row['test']['map']:.1f} |")
    check = report["shared_scale_check"]
    print(f"\noutput ranges {check['ranges']}, shared {check['shared_range']}")
    for kind in ("one scale per map", "one shared scale"):
        v, t = check[kind]["val"], check[kind]["test"]
        print(f"| FP32 output, {kind} | {100 * v['map50']:.1f} | {100 * t['map50']:.1f} | {100 * t['map']:.1f} |")
    print("\n| threads | FP32 ms p50 | INT8 ms p50 | FP32 / INT8 | per-step ratio p50 |\n|---|---|---|---|---|")
    for threads, row in report["latency"].items():
        print(f"| {threads} | {row['fp32_ms_p50']:.3f} | {row['int8_ms_p50']:.3f} | {row['fp32_over_int8']:.2f} "
              f"| {row['fp32_over_int8_per_step_p50']:.2f} |")
    d = report["decode_ms_per_image"]
    print(f"\ndecode + NMS per image: p50 {d['p50']:.3f} ms, p90 {d['p90']:.3f} ms "
          f"({d['detections_per_image_mean']:.1f} detections kept on average)")
    print(f"sizes KB {report['sizes_kb']}; total {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
