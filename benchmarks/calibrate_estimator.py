"""Fit the latency estimator's per-layer-kind efficiencies, and measure its error on what it was not fitted on.

Two sets of timings:
- published phone-CPU timings (edgekd/targets/calibration/published.csv, each row with its source):
  TFLite, 4 threads, Pixel 3 and Pixel 4. Fitted on the families marked `fit` (MobileNet V1,
  Inception), checked on the families marked `check` (MobileNet V2, MnasNet, EfficientNet-Lite):
  the split is by family, never by row.
- this machine's ONNX Runtime timings (host-cpu, FP32 and INT8 QDQ, batch 1, 2 threads), measured
  here: fitted on MobileNet V2, MnasNet, EfficientNet-Lite0, GoogLeNet, SqueezeNet and edgekd's
  teacher; checked on ResNet-18, ResNet-50, MobileNet V3 (large and small) at 224 px and the default
  student at 28 px.

For each: the plain roofline's error and the calibrated estimate's, as estimated / measured, and
for EfficientNet-Lite the growth from Lite0 to each size and the INT8 speed-up against the
published ones. It writes the fitted `[calibration]` tables to benchmarks/out/ and the features of
the published architectures to edgekd/targets/calibration/published_features.csv (what `edgekd
calibrate` refits from, without building the architectures again).

    pip install '.[bench]'                         # timm: EfficientNet-Lite, Inception-v4
    python benchmarks/calibrate_estimator.py       # ~10 min on 2 cores: exports, INT8 quantization, timing
    python benchmarks/calibrate_estimator.py --published-only   # seconds once the features exist

Weights are random (seed 0): latency does not depend on their values.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import tempfile
import tomllib
from pathlib import Path

import torch
from torch import nn

from edgekd.config import Calibration, Hardware, load_target
from edgekd.measure.calibrate import Features, Point, calibration_toml, error_of, fit, graph_features, ratios, roofline_ms
from edgekd.onnx_export import export_onnx
from estimator import RandomImages  # benchmarks/estimator.py, beside this script

HERE = Path(__file__).resolve().parent
CALIBRATION = HERE.parent / "edgekd" / "targets" / "calibration"
OUT = HERE / "out"


def mobilenet_v1(alpha: float) -> nn.Module:
    """MobileNet V1 (Howard et al. 2017, Table 1) at width `alpha`."""
    def c(n):
        return max(8, int(n * alpha))

    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                             nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())

    plan = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)] + \
        [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
    layers = [nn.Conv2d(3, c(32), 3, 2, 1, bias=False), nn.BatchNorm2d(c(32)), nn.ReLU6()]
    layers += [block(c(a), c(b), s) for a, b, s in plan]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c(1024), 1001))


def build(name: str) -> nn.Module:
    import torchvision

    if name.startswith("mobilenet_v1_"):
        return mobilenet_v1(float(name.rsplit("_", 1)[1]))
    if name.startswith("mnasnet_"):
        alpha = name.rsplit("_", 1)[1].replace(".", "_").rstrip("0").rstrip("_")
        return torchvision.models.get_model(f"mnasnet{alpha if '_' in alpha else alpha + '_0'}", weights=None)
    if name.startswith("mobilenet_v2"):
        return torchvision.models.mobilenet_v2(weights=None)
    if name == "inception_v1":
        return torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    if name == "inception_v3":
        return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    if name in ("inception_v4", "inception_resnet_v2") or name.startswith("efficientnet_lite"):
        import timm

        return timm.create_model(name, pretrained=False)
    return torchvision.models.get_model(name, weights=None)


def export(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    if not path.is_file():
        torch.manual_seed(0)
        export_onnx(model.eval(), torch.zeros(1, *shape), path)
    return path


# ------------------------------------------------------------------ published phone timings

def published_rows() -> list[dict]:
    with open(CALIBRATION / "published.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def devices() -> dict[str, Hardware]:
    return {k: Hardware(**v) for k, v in tomllib.loads((CALIBRATION / "devices.toml").read_text()).items()}


def published_features(rows: list[dict], rebuild: bool) -> dict[tuple[str, int, str], Features]:
    path = CALIBRATION / "published_features.csv"
    found = {}
    if path.is_file() and not rebuild:
        with open(path, newline="") as fh:
            found = {(r["model"], int(r["input"]), r["precision"]): Features.from_dict(r) for r in csv.DictReader(fh)}
    wanted = {(r["model"], int(r["input"]), r["precision"]) for r in rows}
    missing = sorted(wanted - set(found))
    if missing:
        with tempfile.TemporaryDirectory() as scratch:
            for model, size, precision in missing:
                onnx_path = export(build(model), (3, size, size), Path(scratch) / f"{model}-{size}.onnx")
                found[(model, size, precision)] = graph_features(onnx_path, 1, precision=precision)[0]
                print(f"features: {model} {size} px {precision}", flush=True)
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            keys = list(next(iter(found.values())).as_dict())
            writer.writerow(["model", "input", "precision", *keys])
            for (model, size, precision), feats in sorted(found.items()):
                writer.writerow([model, size, precision, *feats.as_dict().values()])
    return found


def published_points(rebuild: bool = False) -> list[tuple[Point, str, int]]:
    rows, hardware = published_rows(), devices()
    features = published_features(rows, rebuild)
    return [(Point(f"{r['model']}@{r['input']} ({r['device']})", r["family"], r["precision"], float(r["latency_ms"]),
                   features[(r["model"], int(r["input"]), r["precision"])], hardware[r["device"]], r["source"]),
             r["split"], int(r["input"])) for r in rows]


# ------------------------------------------------------------------ this machine

# each fit family at 224 px and at 32 px: the small inputs are what pins the per-layer cost, which
# dominates a 28-px student and which the 224-px models alone cannot tell from slow layers
HOST_FIT = [(name, size, family) for name, family in (("mobilenet_v2", "mobilenet_v2"), ("mnasnet1_0", "mnasnet"),
                                                       ("efficientnet_lite0", "efficientnet_lite"), ("googlenet", "inception"),
                                                       ("squeezenet1_1", "squeezenet"))
            for size in (224, 32)] + [("edgekd_resnet_fc", 28, "edgekd_resnet")]
HOST_CHECK = [("resnet18", 224, "resnet"), ("resnet50", 224, "resnet"), ("mobilenet_v3_large", 224, "mobilenet_v3"),
              ("mobilenet_v3_small", 224, "mobilenet_v3"), ("edgekd_cnn_fc", 28, "edgekd_cnn")]


def host_files(folder: Path, name: str, size: int) -> dict[str, Path]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if name.startswith("edgekd_"):
        from edgekd.models import create_model

        shape = (1, size, size)
        model = create_model(name, 10, shape)
    else:
        shape = (3, size, size)
        model = build(name)
    fp32 = export(model, shape, folder / f"{name}-{size}.onnx")
    prepared, int8 = folder / f"{name}-{size}.prep.onnx", folder / f"{name}-{size}.int8.onnx"
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(str(prepared), str(int8), RandomImages("input", shape, count=8), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return {"fp32": fp32, "int8": int8}


def host_points(folder: Path) -> list[tuple[Point, str, dict]]:
    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

    target = load_target("host-cpu")
    out = []
    for split, specs in (("fit", HOST_FIT), ("check", HOST_CHECK)):
        for name, size, family in specs:
            for precision, path in host_files(folder, name, size).items():
                measured = OnnxRuntimeRunner(path, target.threads).measure(1, label=f"{name} {precision}")
                features, found = graph_features(path, 1)
                out.append((Point(f"{name}@{size}", family, found, measured.p50, features, target.hardware,
                                  f"measured here: {measured.runtime}"), split, {"p99": measured.p99, "runs": measured.runs}))
                print(f"host: {name} {size} px {precision} {measured.p50:.3f} ms", flush=True)
    return out


# ------------------------------------------------------------------ fit and report

def calibrate(points: list[tuple[Point, str]], source: str) -> tuple[Calibration, dict]:
    fit_points = [p for p, split in points if split == "fit"]
    check_points = [p for p, split in points if split == "check"]
    efficiencies = fit(fit_points)
    check = ratios(check_points, efficiencies)
    both = ratios(fit_points, efficiencies) + check
    families = sorted({p.family for p in fit_points})
    # the interval covers every point seen, fitted and checked: the wider of the two
    error = error_of(both)
    calibration = Calibration(source=source, fitted_on=", ".join(families), error=error, **efficiencies)
    return calibration, {"check": error_of(check).model_dump(), "fit": error_of(ratios(fit_points, efficiencies)).model_dump()}


def table(points: list[tuple[Point, str]], calibration: Calibration, size: dict | None = None) -> list[dict]:
    effs = {k: getattr(calibration, k) for k in ("int8", "fp32") if getattr(calibration, k) is not None}
    rows = []
    for point, split in points:
        estimated = ratios([point], effs)[0] * point.measured_ms
        rows.append({"model": point.model, "family": point.family, "precision": point.precision, "split": split,
                     "measured_ms": point.measured_ms, "calibrated_ms": round(estimated, 3),
                     "calibrated_ratio": round(estimated / point.measured_ms, 3),
                     "roofline_ms": round(roofline_ms(point), 3),
                     "roofline_ratio": round(roofline_ms(point) / point.measured_ms, 3)})
    return rows


def lite_ratios(rows: list[dict]) -> list[dict]:
    """EfficientNet-Lite: growth over Lite0 and the INT8 speed-up, published against estimated."""
    lite = {(r["model"].split("@")[0], r["precision"]): r for r in rows if r["family"] == "efficientnet_lite"}
    out = []
    for i in range(5):
        name = f"efficientnet_lite{i}"
        entry = {"model": name}
        for prec in ("fp32", "int8"):
            base, this = lite[("efficientnet_lite0", prec)], lite[(name, prec)]
            entry[f"growth_{prec}_published"] = round(this["measured_ms"] / base["measured_ms"], 3)
            entry[f"growth_{prec}_estimated"] = round(this["calibrated_ms"] / base["calibrated_ms"], 3)
        fp32, int8 = lite[(name, "fp32")], lite[(name, "int8")]
        entry["speedup_published"] = round(fp32["measured_ms"] / int8["measured_ms"], 3)
        entry["speedup_estimated"] = round(fp32["calibrated_ms"] / int8["calibrated_ms"], 3)
        out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--published-only", action="store_true", help="skip this machine's timings")
    parser.add_argument("--rebuild-features", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    result = {"host": {"machine": platform.machine(), "cpu": _cpu_name()}}

    phone = published_points(args.rebuild_features)
    phone_pairs = [(p, s) for p, s, _ in phone]
    cal, summary = calibrate(phone_pairs, "published TFLite CPU timings, Pixel 3 and Pixel 4, 4 threads "
                                          "(edgekd/targets/calibration/published.csv)")
    rows = table(phone_pairs, cal)
    result["phone"] = {"calibration": cal.model_dump(), "errors": summary, "rows": rows, "lite": lite_ratios(rows)}
    (OUT / "phone-calibration.toml").write_text(calibration_toml(cal))
    _print("phone CPU (published)", rows, summary, cal)

    if not args.published_only:
        with tempfile.TemporaryDirectory() as scratch:
            host = host_points(Path(scratch))
        host_pairs = [(p, s) for p, s, _ in host]
        cal, summary = calibrate(host_pairs, f"ONNX Runtime on {_cpu_name()}, 2 threads, measured by "
                                             f"benchmarks/calibrate_estimator.py")
        rows = table(host_pairs, cal)
        result["host_cpu"] = {"calibration": cal.model_dump(), "errors": summary, "rows": rows}
        (OUT / "host-calibration.toml").write_text(calibration_toml(cal))
        _print("host-cpu (measured here)", rows, summary, cal)
    all_roofline = [r["roofline_ratio"] for part in ("phone", "host_cpu") if part in result for r in result[part]["rows"]]
    result["roofline_error"] = {"low": min(all_roofline), "high": max(all_roofline)}
    print(f"plain roofline, estimated / measured over every point: {min(all_roofline):.3f} .. {max(all_roofline):.3f}")
    (OUT / "calibrate_estimator.json").write_text(json.dumps(result, indent=1))
    (OUT / "latency_tables.md").write_text(markdown(result))


def markdown(result: dict) -> str:
    """The tables docs/latency_estimate.md shows, from this run."""
    out = []
    for part, title in (("phone", "Phone CPU (published timings)"), ("host_cpu", f"host-cpu ({result['host']['cpu']}, measured here)")):
        if part not in result:
            continue
        section = result[part]
        out += [f"### {title}", "", "| model | precision | split | measured ms | calibrated ms | ratio | plain roofline ms | ratio |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['model']} | {r['precision']} | {r['split']} | {r['measured_ms']:g} | {r['calibrated_ms']:.3f} | "
                f"{r['calibrated_ratio']:.2f} | {r['roofline_ms']:.3f} | {r['roofline_ratio']:.2f} |" for r in section["rows"]]
        out += ["", "| error (estimated / measured) | points | median | worst | range |", "|---|---|---|---|---|"]
        for split in ("check", "fit"):
            for precision in ("fp32", "int8"):
                values = [r["calibrated_ratio"] for r in section["rows"] if r["split"] == split and r["precision"] == precision]
                if values:
                    err = error_of(values)
                    out.append(f"| {split} {precision} | {err.points} | {err.median:.2f}x | {err.worst:.2f}x | "
                               f"{err.low:.2f} - {err.high:.2f} |")
        cal = section["calibration"]
        out += ["", "| fitted | " + " | ".join(("conv", "depthwise", "pointwise", "fc", "pool", "memory", "layer_us")) + " |",
                "|---|" + "---|" * 7]
        for precision in ("int8", "fp32"):
            if cal.get(precision):
                out.append(f"| {precision} | " + " | ".join(f"{cal[precision][k]:g}" for k in
                                                      ("conv", "depthwise", "pointwise", "fc", "pool", "memory", "layer_us")) + " |")
        out.append("")
        if "lite" in section:
            out += ["EfficientNet-Lite: growth over Lite0 and INT8 speed-up (FP32 ms / INT8 ms), published and estimated:", "",
                    "| model | FP32 growth pub. | est. | INT8 growth pub. | est. | INT8 speed-up pub. | est. |", "|---|---|---|---|---|---|---|"]
            out += [f"| {r['model']} | {r['growth_fp32_published']:.2f} | {r['growth_fp32_estimated']:.2f} | "
                    f"{r['growth_int8_published']:.2f} | {r['growth_int8_estimated']:.2f} | {r['speedup_published']:.2f} | "
                    f"{r['speedup_estimated']:.2f} |" for r in section["lite"]]
            out.append("")
    return "\n".join(out)


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _print(title: str, rows: list[dict], summary: dict, cal: Calibration) -> None:
    print(f"\n== {title}")
    print(f"{'model':28} {'prec':5} {'split':6} {'measured':>9} {'calibr.':>9} {'ratio':>6} {'roofline':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['model']:28} {r['precision']:5} {r['split']:6} {r['measured_ms']:9.3f} {r['calibrated_ms']:9.3f} "
              f"{r['calibrated_ratio']:6.2f} {r['roofline_ms']:9.3f} {r['roofline_ratio']:6.2f}")
    print("check:", summary["check"], "\nfit:", summary["fit"])
    print(calibration_toml(cal))


if __name__ == "__main__":
    main()
