"""The detection chain's accuracy verdict, in mAP points against the teacher, and what decoding costs.

The three states are the classifier's (docs/accuracy_verdict.md): MISSED when the measured drop is
over the budget, MET when its upper confidence bound is within it, NOT SHOWN in between. The bound
is a paired bootstrap over the reported split's images (`edgekd.detection.evaluate.paired_map_drop`),
read from the detections each stage's ONNX file produced, so a resumed run judges the same files.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from edgekd.detection.evaluate import paired_map_drop
from edgekd.verify.accuracy_budget import allowed_drop

MET, MISSED, NOT_SHOWN = "MET", "MISSED", "NOT SHOWN"


def _detections(root: Path, record: dict) -> list[dict]:
    rows = json.loads((root / record["detections"]).read_text(encoding="utf-8"))
    return [{"boxes": torch.tensor(r["boxes"]).reshape(-1, 4), "scores": torch.tensor(r["scores"]),
             "labels": torch.tensor(r["labels"], dtype=torch.int64)} for r in rows]


def images_to_show(drop: float, upper: float, images: int, max_drop: float) -> int | None:
    """About how many images like these would bring the bound within the budget: the bootstrap's
    margin shrinks as 1/sqrt(images). None when no number can (the drop is at the budget)."""
    if max_drop - drop <= 1e-9:
        return None
    return math.ceil(images * ((upper - drop) / (max_drop - drop)) ** 2)


def map_verdict(ctx, records: list[dict]) -> dict:
    profile, target, data = ctx.profile, ctx.target, ctx.data
    metric, teacher, final = profile.detect.metric, records[0], records[-1]
    max_drop = allowed_drop(profile, target)
    result = paired_map_drop(data.reported.samples, _detections(ctx.run.root, teacher), _detections(ctx.run.root, final),
                             len(data.classes), metric=metric, confidence=profile.accuracy.confidence,
                             resamples=profile.detect.bootstrap_resamples, seed=profile.seed)
    drop, upper, n = result.drop, result.upper, result.images
    state = MISSED if drop > max_drop + 1e-9 else MET if upper <= max_drop + 1e-9 else NOT_SHOWN
    steps = [(r["name"], parent["reported"][metric] - r["reported"][metric]) for parent, r in zip(records, records[1:])]
    most_lost, most_points = max(steps, key=lambda s: s[1]) if steps else (None, 0.0)
    label = {"map50": "mAP50", "map": "mAP@[.5:.95]"}[metric]
    change = f"lost {drop:.2f} points" if drop >= 0 else f"gained {-drop:.2f} points"
    numbers = (f"student ({final['name']}) {label} {result.student:.2f} vs teacher {result.teacher:.2f} on the "
               f"{n} reported images: {change} (at most {upper:.2f} at {100 * result.confidence:g}% confidence, "
               f"paired bootstrap of {result.resamples}), {max_drop:g} allowed")
    needed = images_to_show(drop, upper, n, max_drop) if state == NOT_SHOWN else None
    if state == MET:
        verdict = f"accuracy MET: {numbers}"
    elif state == NOT_SHOWN:
        need = (f"about {needed:,} reported images would show it (add held-out images)" if needed
                else "no number of images can show a drop this close to the budget")
        verdict = f"accuracy NOT SHOWN: {numbers}; {n} images cannot rule out more; {need}, or raise accuracy.max_drop"
    else:
        where = f"; the {most_lost} stage lost the most ({most_points:.2f} points below its parent)" if most_lost else ""
        verdict = f"accuracy MISSED: {numbers}{where}"
    return {"split": "reported", "metric": metric, "images": n, "teacher": result.teacher, "student": result.student,
            "drop_points": drop, "drop_upper_points": upper, "confidence": result.confidence,
            "resamples": result.resamples, "max_drop_points": max_drop, "state": state, "met": state == MET,
            "images_to_show": needed, "most_lost_stage": most_lost, "most_lost_points": most_points, "verdict": verdict}


def postprocess_latency(onnx_path: Path, ctx, images: int = 100) -> dict:
    """Box decoding and NMS (`edgekd.detection.model.decode`, PyTorch) per image at batch 1 on the file's
    own raw outputs, timed on this machine: the part of a detector's latency outside the network."""
    from edgekd.detection.model import decode
    from edgekd.measure.device import this_machine
    from edgekd.measure.target_latency import on_target_device
    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(onnx_path, threads=1)
    split = ctx.data.reported
    raws = [torch.as_tensor(runner.run(split[i][0][None].numpy())) for i in range(min(images, len(split)))]
    k = len(ctx.data.classes)
    for raw in raws[:5]:  # warm-up
        decode(raw, k)
    times, kept = [], []
    for raw in raws:
        started = time.perf_counter()
        out = decode(raw, k)
        times.append(1000.0 * (time.perf_counter() - started))
        kept.append(len(out[0]["scores"]))
    p50, p90 = np.percentile(times, [50, 90])
    on_device = on_target_device(ctx.target)[0]
    where = f"on {ctx.target.device.label}" if on_device else f"on {this_machine().label}, not on {ctx.target.device.label}"
    return {"p50_ms": float(p50), "p90_ms": float(p90), "images": len(raws), "mean_detections": float(np.mean(kept)),
            "on_target": on_device,
            "source": f"measured {where} (PyTorch decode + per-class NMS, batch 1); outside the network's latency"}
