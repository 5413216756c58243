"""INT8 vs FP32 on the CPU runtimes that run them: ONNX Runtime and OpenVINO, side by side.

Models at their natural sizes: edgekd_cnn at 1x28x28 (default width 1.0, and width 0.5: the channel
count of the default profile's 50%-pruned student), trained briefly on Fashion-MNIST; torchvision
resnet18, mobilenet_v3_small and mobilenet_v3_large at 3x224x224 with random weights (BatchNorm
statistics settled on the calibration images, so their logits are not ~0).

Each model as:
  fp32           the FP32 ONNX file (BatchNorm folded)
  ort-static     ONNX Runtime's quantize_static: QDQ, per-channel INT8 weights, UINT8 activations,
                 MinMax, after quant_pre_process (as its documentation has a user do it)
  nncf           NNCF post-training INT8 (edgekd's quantize_with_nncf, CPU scheme) exported as is:
                 NNCF's own placement, the one OpenVINO fuses (edgekd's INT8 for OpenVINO targets)
  edgekd         the same, then edgekd's ONNX Runtime placement pass (edgekd.export.ort_qdq):
                 edgekd's INT8 for ONNX Runtime targets
  edgekd-mixed   edgekd, with the layers ONNX Runtime's profiler times slower in INT8 than in FP32
                 (at that batch) kept in FP32 (edgekd.export.int8_fit); only where such layers exist
run in ONNX Runtime (ort/...) and OpenVINO (ov/...), at batch 1 and 64, 2 threads, every runner
timed in rotated rounds in this one process. INT8 here is post-training (no QAT): the pipeline adds
QAT on top. Accuracy: top-1 on Fashion-MNIST test images for edgekd_cnn; for the random-weight
torchvision models, top-1 agreement with the FP32 file on the same inputs.

    python benchmarks/int8_speed.py                      # ~30 min on 2 quiet cores
    python benchmarks/int8_speed.py --models resnet18 mobilenet_v3_large --batches 1
    python benchmarks/int8_speed.py --quick --models edgekd_cnn
    python benchmarks/int8_speed.py --channels            # only: channel counts vs INT8 speed, edgekd_cnn
    python benchmarks/int8_speed.py --run RUN_DIR         # only: a compress run's own student.fp32/int8.onnx
    python benchmarks/int8_speed.py --transposes          # only: ORT's UINT8 NCHW->NHWC Transpose by channels
    python benchmarks/int8_speed.py --padding             # only: padded vs unpadded float first conv, edgekd_cnn_fc
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgekd.benchmarking import write_results
from edgekd.config import ActivationScheme
from edgekd.export.ort_qdq import conv_counts, place_for_onnxruntime
from edgekd.training.fold import fold_batchnorm
from edgekd.models import create_model
from edgekd.export.onnx_file import INPUT_NAME, export_onnx
from edgekd.export.int8_fit import layer_timings, slower_in_int8
from edgekd.measure.latency import measure_runners_side_by_side
from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner, store_int8_weights
from edgekd.stages.quantize import quantize_with_nncf, strip_to_qdq

OUT = Path(__file__).resolve().parent / "out" / "int8_speed.json"
THREADS = 2
BATCHES = (1, 64)
MODELS = {  # name: (arch, width, input shape)
    "edgekd_cnn": ("edgekd_cnn", 1.0, (1, 28, 28)),
    "edgekd_cnn_w0.5": ("edgekd_cnn", 0.5, (1, 28, 28)),
    "resnet18": ("resnet18", 1.0, (3, 224, 224)),
    "mobilenet_v3_small": ("mobilenet_v3_small", 1.0, (3, 224, 224)),
    "mobilenet_v3_large": ("mobilenet_v3_large", 1.0, (3, 224, 224)),
}
# per round: time_calls settings; rounds: samples pooled over rounds
TIMING = {"full": ({"warmup": 3, "min_runs": 10, "max_runs": 60, "max_seconds": 1.0}, 3),
          "quick": ({"warmup": 2, "min_runs": 5, "max_runs": 10, "max_seconds": 0.5}, 2)}
CALIBRATION = {"edgekd_cnn": 512, "torchvision": 32}
EVAL_IMAGES = {"edgekd_cnn": 2000, "torchvision": 64}


def build(name: str, data) -> tuple[nn.Module, np.ndarray, np.ndarray, np.ndarray | None]:
    """(model in eval mode, calibration images, evaluation images, their labels or None)."""
    arch, width, shape = MODELS[name]
    torch.manual_seed(0)
    if arch == "mobilenet_v3_large":
        from torchvision.models import mobilenet_v3_large

        model = mobilenet_v3_large(weights=None, num_classes=10)
    else:
        model = create_model(arch, 10, shape, width)
    if arch == "edgekd_cnn":
        from edgekd.training.losses import CrossEntropyObjective
        from edgekd.training.loop import TrainPlan, fit

        train = torch.utils.data.Subset(data.train, range(12000))
        fit(model, CrossEntropyObjective(), train, TrainPlan(1, 0.2, 5e-4, 128, 0), label=f"train {name}")
        calibration = np.stack([data.train[i][0].numpy() for i in range(12000, 12000 + CALIBRATION[arch])])
        evaluation = [data.test[i] for i in range(EVAL_IMAGES[arch])]
        return (model.eval(), calibration, np.stack([x.numpy() for x, _ in evaluation]),
                np.array([y for _, y in evaluation]))
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((CALIBRATION["torchvision"], *shape)).astype(np.float32)
    settle_batchnorm(model, torch.from_numpy(calibration))
    evaluation = rng.standard_normal((EVAL_IMAGES["torchvision"], *shape)).astype(np.float32)
    return model.eval(), calibration, evaluation, None


def settle_batchnorm(model: nn.Module, images: torch.Tensor) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), 8):
            model(images[start:start + 8])
    model.eval()


def ort_static(source: Path, path: Path, images: np.ndarray) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT_NAME: images[i:i + 16]} for i in range(0, len(images), 16)])

        def get_next(self):
            return next(self.batches, None)

    prepared = path.with_suffix(".prepared.onnx")
    quant_pre_process(str(source), str(prepared))
    quantize_static(str(prepared), str(path), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return path


def files_for(name: str, model: nn.Module, calibration: np.ndarray, folder: Path) -> dict[str, Path]:
    example = torch.from_numpy(calibration[:2])
    files = {"fp32": export_onnx(fold_batchnorm(model)[0], example, folder / f"{name}.fp32.onnx")}
    files["ort-static"] = ort_static(files["fp32"], folder / f"{name}.ort_static.onnx", calibration)
    dataset = TensorDataset(torch.from_numpy(calibration), torch.zeros(len(calibration), dtype=torch.long))
    quantized = quantize_with_nncf(model, dataset, len(calibration), ActivationScheme.SYMMETRIC, batch_size=16)
    files["nncf"] = store_int8_weights(export_onnx(strip_to_qdq(quantized, example), example,
                                                   folder / f"{name}.nncf.onnx"))
    files["edgekd"] = folder / f"{name}.edgekd.onnx"
    shutil.copyfile(files["nncf"], files["edgekd"])
    place_for_onnxruntime(files["edgekd"], calibration)
    return files


def mixed_for(name: str, files: dict[str, Path], calibration: np.ndarray, batch: int, folder: Path) -> tuple[Path | None, list]:
    timings = layer_timings(files["fp32"], files["edgekd"], THREADS, batch, runs=10 if batch > 1 else 30)
    keep = slower_in_int8(timings)
    if not keep:
        return None, [t.as_dict() for t in timings]
    path = folder / f"{name}.edgekd_mixed_b{batch}.onnx"
    shutil.copyfile(files["edgekd"], path)
    place_for_onnxruntime(path, calibration, keep_float=keep, pad_channels=False)  # the proposal as is
    return path, [t.as_dict() for t in timings]


def accuracy(runner, images: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None) -> float:
    predictions = np.concatenate([runner.run(images[i:i + 64]).argmax(1) for i in range(0, len(images), 64)])
    return float((predictions == (labels if labels is not None else reference)).mean())


def runners_for(files: dict[str, Path], with_openvino: bool) -> dict:
    runners = {f"ort/{k}": OnnxRuntimeRunner(p, THREADS) for k, p in files.items() if k != "nncf"}
    if with_openvino:
        from edgekd.runtimes.openvino import OpenVinoRunner

        runners.update({f"ov/{k}": OpenVinoRunner(p, THREADS) for k, p in files.items()
                        if k in ("fp32", "nncf", "ort-static")})
    return runners


def bench_model(name: str, data, mode: str, with_openvino: bool, folder: Path, batches=BATCHES) -> dict:
    print(f"== {name}", flush=True)
    model, calibration, images, labels = build(name, data)
    files = files_for(name, model, calibration, folder)
    fp32_predictions = np.concatenate([OnnxRuntimeRunner(files["fp32"], THREADS).run(images[i:i + 64]).argmax(1)
                                       for i in range(0, len(images), 64)])
    timing, rounds = TIMING[mode]
    result = {"input_shape": list(MODELS[name][2]), "accuracy_kind": "top-1 (Fashion-MNIST test)" if labels is not None
              else "top-1 agreement with FP32 (random inputs)", "convs": {}, "batches": {}}
    for key in ("fp32", "ort-static", "nncf", "edgekd"):
        result["convs"][key] = conv_counts(files[key], THREADS)
    for batch in batches:
        mixed, timings = mixed_for(name, files, calibration, batch, folder)
        batch_files = {**files, **({"edgekd-mixed": mixed} if mixed else {})}
        runners = runners_for(batch_files, with_openvino)
        latency = measure_runners_side_by_side(runners, batch, timing, rounds)
        result["batches"][str(batch)] = {
            "layers_kept_float": [t["name"] for t in timings if t["int8_ms"] > 1.10 * t["fp32_ms"]],
            "rows": {k: {"p50": v.p50, "p90": v.p90, "runs": v.runs, "runtime": v.runtime} for k, v in latency.items()},
        }
        if mixed:
            result["convs"][f"edgekd-mixed-b{batch}"] = conv_counts(mixed, THREADS)
        for key, runner in runners.items():
            result.setdefault("accuracy", {})
            if key not in result["accuracy"] or "mixed" in key:
                label = f"{key}@b{batch}" if "mixed" in key else key
                result["accuracy"][label] = accuracy(runner, images, labels, fp32_predictions)
        for key, row in result["batches"][str(batch)]["rows"].items():
            base = result["batches"][str(batch)]["rows"][f"{key.split('/')[0]}/fp32"]["p50"]
            row["speedup_vs_same_runtime_fp32"] = base / row["p50"]
        print(json.dumps({k: round(v["p50"], 3) for k, v in result["batches"][str(batch)]["rows"].items()}), flush=True)
    return result


# ---------------------------------------------------------------- channel counts


class PlainCNN(nn.Module):
    """edgekd_cnn's layout with explicit channel counts."""

    def __init__(self, c1: int, c2: int, c3: int):
        super().__init__()

        def block(cin, cout, stride=1):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU())

        self.features = nn.Sequential(block(1, c1), block(c1, c2, 2), block(c2, c3, 2), block(c3, c3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c3, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


CHANNELS = {"16/32/64 (x16)": (16, 32, 64), "15/31/63": (15, 31, 63), "17/33/65": (17, 33, 65),
            "8/16/32 (x8)": (8, 16, 32), "7/15/31": (7, 15, 31), "12/20/36 (x4)": (12, 20, 36)}


def bench_channels(mode: str, folder: Path, data) -> dict:
    """INT8 vs FP32 in ONNX Runtime for edgekd_cnn-shaped nets whose channels are or are not multiples of 8/16."""
    calibration = np.stack([data.train[i][0].numpy() for i in range(256)])
    timing, rounds = TIMING[mode]
    out = {}
    for label, channels in CHANNELS.items():
        torch.manual_seed(0)
        model = PlainCNN(*channels).eval()
        example = torch.from_numpy(calibration[:2])
        fp32 = export_onnx(model, example, folder / "ch.fp32.onnx")
        dataset = TensorDataset(torch.from_numpy(calibration), torch.zeros(len(calibration), dtype=torch.long))
        int8 = store_int8_weights(export_onnx(strip_to_qdq(quantize_with_nncf(model, dataset, 256, ActivationScheme.SYMMETRIC),
                                                           example), example, folder / "ch.int8.onnx"))
        place_for_onnxruntime(int8, calibration)
        macs = sum(m.weight.numel() * 1 for m in model.modules() if isinstance(m, nn.Conv2d))  # per output pixel
        row = {"channels": channels, "conv_weights": macs}
        for batch in BATCHES:
            runners = {"fp32": OnnxRuntimeRunner(fp32, THREADS), "int8": OnnxRuntimeRunner(int8, THREADS)}
            lat = measure_runners_side_by_side(runners, batch, timing, rounds)
            row[f"batch{batch}"] = {"fp32_ms": lat["fp32"].p50, "int8_ms": lat["int8"].p50,
                                    "speedup": lat["fp32"].p50 / lat["int8"].p50}
        print(label, json.dumps({k: v for k, v in row.items() if k.startswith("batch")}), flush=True)
        out[label] = row
    return out


TRANSPOSE_CHANNELS = {28: (8, 12, 16, 24, 32), 14: (16, 20, 24, 32, 40, 48, 64)}  # map side: channel counts


def bench_transposes(mode: str, batch: int = 64) -> dict:
    """The Transpose ONNX Runtime puts between a float convolution and its channels-last QLinearConv
    (UINT8, NCHW -> NHWC), alone, at each channel count: why edgekd pads such maps to a multiple of
    16 (edgekd.export.ort_qdq, rewrite 8). Rotated rounds, but each session is opened, timed and
    closed on its own: with several 2-thread sessions alive this Transpose's time swung 4x
    depending on which session ran before it (idle pools' threads competing for the 2 cores)."""
    import onnxruntime
    from onnx import TensorProto, helper

    from edgekd.measure.latency import percentiles, time_calls

    def session(channels: int, side: int):
        shape = [batch, channels, side, side]
        graph = helper.make_graph(
            [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])], "transpose",
            [helper.make_tensor_value_info("x", TensorProto.UINT8, shape)],
            [helper.make_tensor_value_info("y", TensorProto.UINT8, [batch, side, side, channels])])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = THREADS
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        return (onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]),
                np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8))

    timing, rounds = TIMING[mode]
    out = {}
    for side, counts in TRANSPOSE_CHANNELS.items():
        samples = {c: [] for c in counts}
        for r in range(rounds):
            for channels in counts[r % len(counts):] + counts[:r % len(counts)]:
                transpose, images = session(channels, side)
                samples[channels] += time_calls(lambda: transpose.run(None, {"x": images}),
                                                label=f"{channels} channels, {side}x{side}", **timing)
                transpose = None  # closed before the next one opens
        out[f"{side}x{side}"] = {c: 1000 * percentiles(v)[0] for c, v in samples.items()}
        print(f"batch {batch}, {side}x{side}: " + ", ".join(f"{c} channels {us:.0f} us"
                                                        for c, us in out[f"{side}x{side}"].items()), flush=True)
    return {"batch": batch, "threads": THREADS, "us": out}


PADDING_WIDTHS = (0.5, 0.75, 1.25, 1.5, 1.75, 2.5)  # edgekd_cnn_fc first convolution: 8, 12, 20, 24, 28, 40 channels


def bench_padding(mode: str, folder: Path, data) -> dict:
    """edgekd_cnn_fc at several widths (random weights, BatchNorm settled on Fashion-MNIST images),
    NNCF INT8 placed for ONNX Runtime with the first convolution kept float, as the default
    student's run keeps it: that file with rewrite 8's channel padding and without, against FP32,
    side by side at batch 1 and 64. Why `edgekd.export.int8_fit` times the padding instead of always
    applying it."""
    calibration = np.stack([data.train[i][0].numpy() for i in range(256)])
    timing, rounds = TIMING[mode]
    out = {}
    for width in PADDING_WIDTHS:
        torch.manual_seed(0)
        model = create_model("edgekd_cnn_fc", 10, (1, 28, 28), width=width)
        settle_batchnorm(model, torch.from_numpy(calibration[:64]))
        example = torch.from_numpy(calibration[:2])
        dataset = TensorDataset(torch.from_numpy(calibration), torch.zeros(len(calibration), dtype=torch.long))
        files = {"fp32": export_onnx(fold_batchnorm(model)[0], example, folder / "pad.fp32.onnx"),
                 "padded": store_int8_weights(export_onnx(strip_to_qdq(quantize_with_nncf(
                     model, dataset, 256, ActivationScheme.SYMMETRIC), example), example, folder / "pad.int8.onnx"))}
        place_for_onnxruntime(files["padded"], calibration)
        files["unpadded"] = Path(shutil.copyfile(files["padded"], folder / "pad.unpadded.onnx"))
        first = next(n.name for n in onnx.load(str(files["fp32"])).graph.node if n.op_type == "Conv")
        place_for_onnxruntime(files["unpadded"], calibration, keep_float=[first], pad_channels=False)
        padded = place_for_onnxruntime(files["padded"], calibration, keep_float=[first]).channels_padded
        row = {"padded": padded}
        for batch in BATCHES:
            lat = measure_runners_side_by_side({k: OnnxRuntimeRunner(p, THREADS) for k, p in files.items()},
                                               batch, timing, rounds)
            row[f"batch{batch}"] = {k: {"p50": v.p50, "vs_fp32": lat["fp32"].p50 / v.p50} for k, v in lat.items()}
        timed = {b: ", ".join(f"{k} {v['p50']:.4f} ms ({v['vs_fp32']:.2f}x)" for k, v in row[f"batch{b}"].items())
                 for b in BATCHES}
        print(f"width {width} ({', '.join(padded) or 'nothing padded'}): "
              + "; ".join(f"batch {b}: {text}" for b, text in timed.items()), flush=True)
        out[str(width)] = row
    return out


def bench_run(run: Path, mode: str, with_openvino: bool, batches) -> dict:
    """A finished run's own files, as they ship: `student.fp32.onnx` (its last FP32 stage) against
    `student.int8.onnx` (QAT, placed and mixed for the run's target), timed side by side."""
    report = json.loads((run / "report.json").read_text())
    files = {"fp32": run / "student.fp32.onnx", "edgekd": run / "student.int8.onnx"}
    timing, rounds = TIMING[mode]
    stages = {s["name"]: s for s in report["stages"]}
    last_fp32 = [s for s in report["stages"] if s["precision"] == "fp32"][-1]
    result = {"run": str(run), "target": report["target"]["name"], "shipped": report["shipped"],
              "convs": {k: conv_counts(p, THREADS) for k, p in files.items()},
              "accuracy": {"fp32": last_fp32["accuracy"], "edgekd": stages["quantize"]["accuracy"]},
              "macs": stages["quantize"]["macs"], "batches": {}}
    for batch in batches:
        runners = {f"ort/{k}": OnnxRuntimeRunner(p, THREADS) for k, p in files.items()}
        if with_openvino:
            from edgekd.runtimes.openvino import OpenVinoRunner

            runners.update({f"ov/{k}": OpenVinoRunner(p, THREADS) for k, p in files.items()})
        latency = measure_runners_side_by_side(runners, batch, timing, rounds)
        rows = {k: {"p50": v.p50, "p90": v.p90, "runs": v.runs, "runtime": v.runtime} for k, v in latency.items()}
        for key, row in rows.items():
            row["speedup_vs_same_runtime_fp32"] = rows[f"{key.split('/')[0]}/fp32"]["p50"] / row["p50"]
        result["batches"][str(batch)] = {"rows": rows}
        print(f"batch {batch}: " + ", ".join(f"{k} {v['p50']:.4f} ms ({v['speedup_vs_same_runtime_fp32']:.2f}x)"
                                            for k, v in rows.items()), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--quick", action="store_true", help="short timing (a smoke test of the script)")
    parser.add_argument("--no-openvino", action="store_true")
    parser.add_argument("--channels", action="store_true", help="only the channel-count study")
    parser.add_argument("--run", type=Path, help="only: time this compress run's student.fp32.onnx and student.int8.onnx")
    parser.add_argument("--transposes", action="store_true", help="only: ORT's UINT8 Transpose by channel count")
    parser.add_argument("--padding", action="store_true", help="only: rewrite 8's channel padding, timed")
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    torch.set_num_threads(THREADS)
    from edgekd.data import load_fashion_mnist

    data = load_fashion_mnist()
    with_openvino = not args.no_openvino
    if with_openvino:
        from edgekd.runtimes.openvino import openvino_available

        with_openvino, why = openvino_available()
        if not with_openvino:
            print(f"OpenVINO skipped: {why}", file=sys.stderr)
    import onnxruntime

    result = {"threads": THREADS, "mode": mode,
              "onnxruntime": onnxruntime.__version__}
    if with_openvino:
        import openvino

        result["openvino"] = openvino.__version__
    with tempfile.TemporaryDirectory() as folder:
        if args.run is not None:
            if not (args.run / "report.json").is_file():
                parser.error(f"{args.run}: no report.json (not a finished edgekd run folder)")
            result["run"] = bench_run(args.run, mode, with_openvino, tuple(args.batches))
        elif args.transposes:
            result["transposes"] = bench_transposes(mode)
        elif args.padding:
            result["padding"] = bench_padding(mode, Path(folder), data)
        elif args.channels:
            result["channels"] = bench_channels(mode, Path(folder), data)
        else:
            result["models"] = {name: bench_model(name, data, mode, with_openvino, Path(folder), tuple(args.batches))
                                for name in args.models}
    study = next((name for name in ("run", "transposes", "padding", "channels") if getattr(args, name)), None)
    if args.out == OUT and study:  # each study keeps its own file
        args.out = OUT.with_name(f"int8_speed_{study}.json")
    write_results(args.out.name, result, out=args.out.parent)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
