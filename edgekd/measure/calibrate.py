"""Fitting a target's per-layer-kind efficiencies to timings, and measuring the fit's error.

A timing is a `Point`: one model's measured p50 on one device, with the model's per-kind MACs and
bytes (`features`, from edgekd.measure.estimate.graph_layers) and the device's peak figures. The
calibrated estimate is linear in the inverse efficiencies:

    t = sum over kinds of 2 * MACs_kind / (eff_kind * peak) + bytes_kind / (eff_kind * bandwidth) [depthwise, pool, memory]
        + layers * layer_us

so the fit is a bounded linear least squares (efficiency <= 1: nothing beats the peak) on
residuals relative to the measured time, since the verdict's error is a ratio. The points a
calibration is judged on are never the ones it was fitted on: published data is split by model
family (benchmarks/calibrate_estimator.py), a user's own timings by leaving one out
(`edgekd calibrate`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.config import Calibration, Efficiencies, EstimateError, Hardware
from edgekd.measure.estimate import KINDS, MEMORY_BOUND, estimate_latency, graph_layers

COMPUTE = ("conv", "depthwise", "pointwise", "fc")  # kinds with MACs
# kinds timed by the bytes they move rather than their MACs: a 5x5 depthwise convolution has 2.8x
# the MACs of a 3x3 one, but moves the same activations, and runtimes are bound by the latter


@dataclass(frozen=True)
class Features:
    """What the calibrated estimate reads from a graph: MACs per compute kind, the bytes that
    memory-bound layers move, and how many layers cost time."""

    macs: dict[str, int]
    moved: dict[str, int]  # bytes in and out, per kind
    layers: int

    def as_dict(self) -> dict:
        return {**{f"macs_{k}": self.macs.get(k, 0) for k in COMPUTE}, **{f"bytes_{k}": self.moved.get(k, 0) for k in KINDS},
                "layers": self.layers}

    @classmethod
    def from_dict(cls, row: dict) -> "Features":
        return cls({k: int(row[f"macs_{k}"]) for k in COMPUTE}, {k: int(row[f"bytes_{k}"]) for k in KINDS},
                   int(row["layers"]))


def graph_features(path: Path, batch: int = 1, precision: str | None = None) -> tuple[Features, str]:
    """Features of an ONNX file, and the precision its compute layers run at ("int8" when any
    does: a QDQ graph). `precision` forces one (a published INT8 timing of an FP32 graph)."""
    rows = graph_layers(path, batch, precision=precision)
    macs = {k: 0 for k in COMPUTE}
    moved = {k: 0 for k in KINDS}
    for _, _, kind, _, layer_macs, layer_bytes in rows:
        moved[kind] += layer_bytes
        if kind in macs:
            macs[kind] += layer_macs
    found = precision or ("int8" if any(r[3] == "int8" for r in rows) else "fp32")
    return Features(macs, moved, len(rows)), found


@dataclass(frozen=True)
class Point:
    model: str
    family: str
    precision: str
    measured_ms: float
    features: Features
    hardware: Hardware
    source: str = ""
    path: Path | None = None  # the ONNX file timed, where it is here
    batch: int = 1


def _peak(hardware: Hardware, precision: str) -> float:
    return {"int8": hardware.int8_tops, "fp16": hardware.fp16_tflops, "fp32": hardware.fp32_tflops}[precision] * 1e12


def design_row(point: Point) -> np.ndarray:
    """Seconds at 100% of peak per kind, the memory-bound seconds at full bandwidth, and the layer count."""
    peak = _peak(point.hardware, point.precision)
    bandwidth = point.hardware.memory_bandwidth_gbs * 1e9
    return np.array([(point.features.moved[k] / bandwidth) if k in MEMORY_BOUND else 2 * point.features.macs[k] / peak
                     for k in KINDS] + [point.features.layers * 1e-6])


def predict_ms(point: Point, efficiencies: Efficiencies) -> float:
    inverse = np.array([1 / getattr(efficiencies, k) for k in KINDS] + [efficiencies.layer_us])
    return float(design_row(point) @ inverse) * 1000.0


def roofline_ms(point: Point) -> float:
    """The plain (uncalibrated) roofline's estimate of a point: every fraction of peak at 1 and
    the device's own per-layer overhead, which is what `estimate_latency` does for a target
    without a `[calibration]` table (tests/test_calibrate.py holds the two equal)."""
    ones = {kind: 1.0 for kind in KINDS}
    return predict_ms(point, Efficiencies(**ones, layer_us=point.hardware.layer_overhead_us))


def fit(points: list[Point], prior: dict[str, Efficiencies] | None = None,
        prior_weight: float = 0.0) -> dict[str, Efficiencies]:
    """Efficiencies per precision that minimise the relative error on `points`, with one per-layer
    cost shared by all precisions: it is the runtime's dispatch, which does not depend on the
    arithmetic. With `prior`, each coefficient is also pulled towards the prior's (weight
    `prior_weight` each), so a handful of timings refines a calibration instead of overfitting it."""
    from scipy.optimize import lsq_linear

    if not points:
        raise ValueError("no points to fit")
    precisions = sorted({p.precision for p in points})
    k = len(KINDS)
    width = k * len(precisions) + 1  # each precision's kinds, then the shared layer cost

    def spread(row: np.ndarray, precision: str) -> np.ndarray:
        out = np.zeros(width)
        at = precisions.index(precision) * k
        out[at:at + k], out[-1] = row[:k], row[k]
        return out

    raw = np.stack([spread(design_row(p), p.precision) for p in points])
    if not prior and len(points) < width + 2:
        return _fit_one_per_precision(points, precisions)
    rows = raw / np.array([p.measured_ms / 1000.0 for p in points])[:, None]
    targets = np.ones(len(points))
    scale = np.maximum(np.abs(rows).max(axis=0), 1e-12)  # comparable columns for the solver's tolerance
    if prior and prior_weight > 0:
        wanted = np.full(width, np.nan)
        for precision, eff in prior.items():
            if precision in precisions:
                at = precisions.index(precision) * k
                wanted[at:at + k] = [1 / getattr(eff, name) for name in KINDS]
        layer = [eff.layer_us for eff in prior.values()]
        wanted[-1] = max(float(np.mean(layer)), 0.1) if layer else np.nan
        for i in np.flatnonzero(~np.isnan(wanted)):
            extra = np.zeros(width)
            extra[i] = prior_weight / wanted[i]
            rows, targets = np.vstack([rows, extra]), np.append(targets, prior_weight)
    lower = np.array([1.0] * (width - 1) + [0.0]) * scale  # efficiency <= 1 (inverse >= 1); layer time >= 0
    solved = lsq_linear(rows / scale, targets, bounds=(lower, np.full(width, np.inf)))
    inverse = solved.x / scale
    # a kind the points never exercise is left at the bound (efficiency 1.0): nothing beyond what was seen
    inverse[:-1][np.abs(raw).max(axis=0)[:-1] == 0] = 1.0
    layer_us = round(float(inverse[-1]), 3)
    out = {}
    for j, precision in enumerate(precisions):
        values = {name: float(min(1.0, 1.0 / max(inverse[j * k + i], 1.0))) for i, name in enumerate(KINDS)}
        out[precision] = Efficiencies(**{name: _sig(v) for name, v in values.items()}, layer_us=layer_us)
    return out


def _fit_one_per_precision(points: list[Point], precisions: list[str]) -> dict[str, Efficiencies]:
    """Too few points for one efficiency per kind: one for all kinds of each precision, and the
    shared per-layer cost. Coarser, but it cannot invent a kind that runs at 0.01% of peak."""
    from scipy.optimize import lsq_linear

    rows = np.zeros((len(points), len(precisions) + 1))
    for i, point in enumerate(points):
        row = design_row(point)
        rows[i, precisions.index(point.precision)], rows[i, -1] = row[:-1].sum(), row[-1]
        rows[i] /= point.measured_ms / 1000.0
    scale = np.maximum(np.abs(rows).max(axis=0), 1e-12)
    lower = np.array([1.0] * len(precisions) + [0.0]) * scale
    inverse = lsq_linear(rows / scale, np.ones(len(points)), bounds=(lower, np.full(len(lower), np.inf))).x / scale
    return {precision: Efficiencies(**{name: _sig(min(1.0, 1.0 / max(inverse[j], 1.0))) for name in KINDS},
                                    layer_us=round(float(inverse[-1]), 3)) for j, precision in enumerate(precisions)}


def _sig(value: float) -> float:
    """An efficiency to 4 significant figures, never rounded to 0."""
    return float(f"{max(value, 1e-6):.4g}")


def ratios(points: list[Point], efficiencies: dict[str, Efficiencies]) -> list[float]:
    """estimated / measured for each point, with the efficiencies of its precision."""
    return [predict_ms(p, efficiencies[p.precision]) / p.measured_ms for p in points]


def error_of(values: list[float]) -> EstimateError:
    """The error record of a list of estimated / measured ratios."""
    folded = [max(r, 1 / r) for r in values]
    return EstimateError(low=round(min(values), 3), high=round(max(values), 3), points=len(values),
                         worst=round(max(folded), 3), median=round(statistics.median(folded), 3))


def leave_one_out(points: list[Point], prior: dict[str, Efficiencies], prior_weight: float) -> list[float]:
    """estimated / measured of each point under a fit made without it: the error a new model would see."""
    out = []
    for i, point in enumerate(points):
        rest = [p for j, p in enumerate(points) if j != i]
        fitted = fit(rest, prior, prior_weight) if rest else {}
        eff = fitted.get(point.precision) or prior[point.precision]
        out.append(predict_ms(point, eff) / point.measured_ms)
    return out


def calibration_toml(calibration: Calibration) -> str:
    """The `[calibration]` tables of a target file."""
    lines = ["[calibration]", f"source = {_quote(calibration.source)}", f"fitted_on = {_quote(calibration.fitted_on)}"]
    for precision in ("int8", "fp16", "fp32"):
        eff = getattr(calibration, precision)
        if eff is None:
            continue
        lines += ["", f"[calibration.{precision}]",
                  "# achieved fraction of the peak (memory: of the bandwidth); layer_us: each layer's fixed cost"]
        lines += [f"{k} = {getattr(eff, k)}" for k in (*KINDS, "layer_us")]
    err = calibration.error
    lines += ["", "[calibration.error]", "# estimated / measured over the points of `source`, fitted and checked: every estimate's interval",
              f"low = {err.low}", f"high = {err.high}", f"points = {err.points}"]
    lines += [f"{k} = {getattr(err, k)}" for k in ("worst", "median") if getattr(err, k) is not None]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------------ edgekd calibrate

PRIOR_WEIGHT = 0.3  # how hard a handful of timings is pulled towards the target's existing calibration


@dataclass(frozen=True)
class Refit:
    text: str  # the calibrated target file
    calibration: Calibration
    rows: list[dict]  # per report: model, precision, measured, before, after (left out of the fit)


def points_from_reports(reports: list[Path], hardware: Hardware) -> list[Point]:
    """One Point per `edgekd bench --json` report measured on the device; anything else is refused."""
    import json

    from edgekd.errors import BadInputError

    points, seen = [], {}
    for report in reports:
        try:
            data = json.loads(Path(report).read_text(encoding="utf-8"))
            latency, model, batch = data["latency_ms"], Path(data["model"]), int(data["batch"])
        except FileNotFoundError:
            raise BadInputError(f"report not found: {report}") from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise BadInputError(f"{report}: not an `edgekd bench --json` report ({type(err).__name__}: {err})") from None
        if latency.get("source") != "measured":
            raise BadInputError(f"{report}: its latency was estimated, not measured; run `edgekd bench --json` on the device")
        if not model.is_file() and not model.is_absolute() and (Path(report).parent / model).is_file():
            model = Path(report).parent / model  # a relative path, from where the report was made beside it
        if not model.is_file():
            raise BadInputError(f"{report}: the model it timed is not here: {model}")
        key = (model.resolve(), batch)
        if key in seen:
            raise BadInputError(f"{report}: times the same model as {seen[key]} ({model.name}, batch {batch}); "
                                f"each report must be a different model")
        seen[key] = report
        if model.suffix.lower() != ".onnx":
            raise BadInputError(f"{report}: calibration reads the layers of an ONNX file; {model.name} is not one")
        features, precision = graph_features(model, batch)
        if sum(features.macs.values()) == 0:
            raise BadInputError(f"{report}: no layer shapes can be read from {model.name} (dynamic height/width?); "
                                f"export it with a fixed input shape")
        points.append(Point(model.name, model.stem, precision, float(latency["p50"]), features, hardware, str(report),
                            model, batch))
    return points


def refit_target(target_source: str, reports: list[Path]) -> Refit:
    """`edgekd calibrate`: the target refitted to the device's own timings. Each report's error is
    taken from a fit made without it, so the new interval is one a new model would see."""
    from edgekd.config import load_target, resolve_target_path
    from edgekd.errors import BadInputError

    target = load_target(target_source)
    if len(reports) < 3:
        raise BadInputError(f"calibrate needs at least 3 measured reports to state an error; got {len(reports)}")
    points = points_from_reports(reports, target.hardware)
    old = target.calibration
    prior = {p: getattr(old, p) for p in ("int8", "fp16", "fp32") if old is not None and getattr(old, p) is not None}
    for precision in {p.precision for p in points}:
        if precision not in prior and sum(p.precision == precision for p in points) < 2:
            raise BadInputError(f"calibrate: only one {precision} report and no {precision} calibration to refine; "
                                f"give at least 2 {precision} models")
    weight = PRIOR_WEIGHT if prior else 0.0
    fitted = fit(points, prior, weight)
    held_out = leave_one_out(points, prior, weight)
    before = [estimate_latency(p.path, target, p.batch)[0].p50 for p in points]  # what the target said so far
    rows = [{"model": p.model, "precision": p.precision, "measured_ms": p.measured_ms, "before_ms": b,
             "after_ms": r * p.measured_ms} for p, b, r in zip(points, before, held_out)]
    source = f"edgekd calibrate on {len(points)} measured reports ({', '.join(sorted({p.model for p in points}))})"
    if old is not None:
        source += f", refining: {old.source}"
    kept = {p: getattr(old, p) for p in ("int8", "fp16", "fp32")} if old is not None else {}
    calibration = Calibration(source=source, fitted_on=", ".join(sorted({p.model for p in points})),
                              error=error_of(held_out), **{**kept, **fitted})
    text = _without_calibration(resolve_target_path(target_source).read_text(encoding="utf-8"))
    return Refit(text.rstrip() + "\n\n" + calibration_toml(calibration), calibration, rows)


def _without_calibration(text: str) -> str:
    """A target file's text with its [calibration...] tables (and the comment lines just above them) removed."""
    lines, kept, skipping = text.splitlines(), [], False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            skipping = stripped.startswith("[calibration")
            if skipping:
                while kept and kept[-1].lstrip().startswith("#"):
                    kept.pop()
        if not skipping:
            kept.append(line)
    return "\n".join(kept)
