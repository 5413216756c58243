"""Budget-driven pruning: prune in steps until the student's INT8 latency on the run's target fits
the budget less a margin, recovering by distillation after every step (NetAdapt, Yang et al. 2018).

Each step proposes one candidate per prunable layer group (a layer and everything the dependency
graph ties to it): remove `step_fraction` of that group's channels, least important first, keeping
counts in multiples of `round_to`. Every candidate is exported, quantized to an INT8 QDQ graph
(ONNX Runtime's static quantizer, calibrated on a few images) and timed with the latency edgekd
reports for the target (`target_latency`: measured where the target runs here, the roofline
estimate otherwise), and scored on a slice of the validation split without fine-tuning. The
step keeps the candidate that loses the least validation accuracy per millisecond it saves;
then the whole student recovers by distillation. NetAdapt instead asks every candidate for the
same latency cut and fine-tunes each briefly before choosing; scoring accuracy per millisecond
without per-candidate fine-tuning keeps one step at one export and one evaluation per layer.

The INT8 graph judged here is an approximation of the shipped one (NNCF QAT, then
`stages/quantize`): same layers and shapes, Q/DQ on every convolution and matrix product, so the
estimate and ONNX Runtime both run them as INT8; the final verdict is still taken on the real file.
"""

from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from edgekd import distributed
from edgekd.config import ActivationScheme, Target
from edgekd.data import stratified_subset
from edgekd.measure.latency import Latency
from edgekd.measure.target_latency import target_latency
from edgekd.metrics import count
from edgekd.export.onnx_file import INPUT_NAME, export_onnx
from edgekd.progress import info
from edgekd.stages import StageContext, StageOutput
from edgekd.stages.prune.common import (ignored_layers, importance_of, pruning_guard, recover, resume_progress,
                                        save_progress, sparse_training, taylor_gradients, validation_set)
from edgekd.training.loop import accuracy

CALIBRATION_IMAGES = 8


def quantize_for_latency(fp32: Path, int8: Path, images: np.ndarray, target: Target) -> Path:
    """An INT8 QDQ graph shaped like the one that ships: ONNX Runtime's static quantizer, per-channel
    INT8 weights, activations signed for TensorRT and unsigned on CPUs (the target's scheme)."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT_NAME: images[i:i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.batches, None)

    signed = target.activation_scheme is ActivationScheme.SYMMETRIC_SIGNED
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint at WARNING
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if signed else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": target.activation_scheme is not ActivationScheme.ASYMMETRIC})
    return int8


def int8_latency(model: nn.Module, ctx: StageContext, workdir: Path, label: str) -> Latency:
    """The target latency of `model` as it would ship in INT8 (see the module docstring)."""
    fp32, int8 = workdir / "candidate.fp32.onnx", workdir / "candidate.int8.onnx"
    export_onnx(copy.deepcopy(model).eval(), ctx.example, fp32, ctx.profile.export.opset)
    images = ctx.example[:CALIBRATION_IMAGES].numpy().astype(np.float32)
    quantize_for_latency(fp32, int8, images, ctx.target)
    return target_latency(int8, ctx.target, label=label).latency


def limits(target: Target, margin: float) -> dict[str, float]:
    """The latencies the student must stay under: each stated budget less the margin."""
    stated = {"p50": target.budget_p50_ms, "p99": target.budget.latency_p99_ms}
    return {k: v * (1 - margin) for k, v in stated.items() if v is not None}


def fits(latency: Latency, goal: dict[str, float]) -> bool:
    """Every limit the latency has a number for (an estimate has no p99), as the budget verdict judges:
    an estimate's p50 by the upper end of its interval, so a fitted student is one the verdict shows MET."""
    def value(k: str):
        return latency.p50_upper if k == "p50" else getattr(latency, k)

    return all(value(k) <= v for k, v in goal.items() if value(k) is not None)


@dataclass
class Candidate:
    layer: str  # the group's root module
    channels: int  # its output channels now
    removed: int
    model: nn.Module
    latency: Latency
    accuracy: float  # on the candidate slice of validation, before recovery
    score: float  # accuracy lost per millisecond saved (lower is better)


def _channel_idxs(group, importance, keep: int) -> list[int]:
    scores = importance(group)
    return sorted(torch.argsort(scores)[: len(scores) - keep].tolist())


def _to_remove(channels: int, fraction: float, round_to: int) -> int:
    """How many of `channels` one candidate removes: `fraction`, so that a multiple of `round_to`
    remains (at least one `round_to`); 0 when the layer is already that small."""
    keep = (math.floor(channels * (1 - fraction) / round_to)) * round_to
    if keep >= channels:
        keep = (channels - 1) // round_to * round_to
    return channels - keep if keep >= round_to else 0


def candidates(model: nn.Module, ctx: StageContext, workdir: Path, slice_, base_accuracy: float,
               base_latency: Latency) -> list[Candidate]:
    cfg = ctx.profile.prune
    example = ctx.example[:1]
    names = {m: n for n, m in model.named_modules()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    importance = importance_of(cfg.importance)
    found = []
    groups = list(graph.get_all_groups(ignored_layers=ignored_layers(model, cfg, ctx.data.num_classes),
                                       root_module_types=[nn.Conv2d, nn.Linear]))
    for group in groups:
        root = group[0].dep.target.module
        channels = graph.get_pruner_of_module(root).get_out_channels(root)
        removed = _to_remove(channels, cfg.step_fraction, cfg.round_to)
        if removed == 0:
            continue
        idxs = _channel_idxs(group, importance, channels - removed)
        trial = copy.deepcopy(model)
        layer = dict(trial.named_modules())[names[root]]
        trial_graph = tp.DependencyGraph().build_dependency(trial, example_inputs=example)
        trial_group = trial_graph.get_pruning_group(layer, trial_graph.get_pruner_of_module(layer).prune_out_channels,
                                                    idxs=idxs)
        if not trial_graph.check_pruning_group(trial_group):
            continue
        trial_group.prune()
        trial.eval()
        latency = int8_latency(trial, ctx, workdir, f"candidate {names[root]} latency")
        saved = base_latency.p50 - latency.p50
        if saved <= 0:  # no faster on this target: never worth its accuracy
            continue
        acc = accuracy(trial, slice_)
        found.append(Candidate(names[root], channels, removed, trial, latency, acc, (base_accuracy - acc) / saved))
    return found


def _point(step: int, model: nn.Module, ctx: StageContext, latency: Latency, val_accuracy: float, **extra) -> dict:
    macs, params = count(model, ctx.example[:1])
    return {"step": step, "latency_ms": latency.p50, "latency_p99_ms": latency.p99, "latency_source": latency.source,
            "latency_p50_low": latency.p50_low, "latency_p50_high": latency.p50_high,
            "val_accuracy": val_accuracy, "macs": macs, "params": params, **extra}


def _budget_fit(met: bool, point: dict, budget: dict, floor: float | None, target: Target, reason: str) -> dict:
    shown = (f", at most {point['latency_p50_high']:.4g} ms within the estimator's error range"
             if point.get("latency_p50_high") is not None and point["latency_source"] != "measured" else "")
    numbers = (f"INT8 latency {point['latency_ms']:.4g} ms ({point['latency_source']}{shown}) against the budget "
               f"{budget['p50']:.4g} ms (less the margin: {budget['goal_p50']:.4g} ms) on {target.name}")
    if floor is not None:
        numbers += f"; validation top-1 {100 * point['val_accuracy']:.2f}% against the floor {100 * floor:.2f}%"
    message = (f"budget fitted: {numbers}" if met else f"budget not fitted ({reason}): {numbers}")
    return {"met": met, "latency_ms": point["latency_ms"], "budget_ms": budget["p50"],
            "goal_ms": budget["goal_p50"], "accuracy": point["val_accuracy"], "floor": floor,
            "reason": reason, "message": message}


def prune_to_budget(model: nn.Module, ctx: StageContext) -> StageOutput:
    cfg = ctx.profile.prune
    goal = limits(ctx.target, cfg.margin)
    budget = {"p50": ctx.target.budget_p50_ms or ctx.target.budget.latency_p99_ms, "goal_p50": goal.get("p50", goal.get("p99"))}
    val, val_source = validation_set(ctx)
    slice_ = stratified_subset(val, cfg.candidate_samples, ctx.profile.seed)
    macs_before, params_before = count(model, ctx.example[:1])
    path, losses, first_step, sparse_losses = [], [], 1, []
    model, resumed = resume_progress(model, ctx)
    if resumed is not None:
        path, losses = resumed["path"], resumed["losses"]
        first_step = path[-1]["step"] + 1
    with tempfile.TemporaryDirectory(prefix="edgekd-netadapt-") as tmp:
        workdir = Path(tmp)
        if not path:
            if cfg.importance == "group_norm":
                sparse_losses = sparse_training(model, ctx)
            latency = distributed.broadcast(int8_latency(model, ctx, workdir, "prune start latency"))
            path.append(_point(0, model, ctx, latency, accuracy(model, val), layer=None, removed=0))
        floor, guarding = pruning_guard(ctx, path[0]["val_accuracy"])
        if ctx.accuracy_floor is not None and floor is None:
            info(f"[yellow]prune: {guarding}")
        latency = Latency(path[-1]["latency_ms"], None, path[-1]["latency_p99_ms"], path[-1]["latency_source"], "",
                          ctx.target.input.batch, p50_low=path[-1].get("latency_p50_low"),
                          p50_high=path[-1].get("latency_p50_high"))
        met, reason = fits(latency, goal), "fits before pruning" if fits(latency, goal) else ""
        step = first_step
        while not met and step <= cfg.max_steps:
            if cfg.importance == "taylor":
                taylor_gradients(model, ctx)
            base_accuracy = accuracy(model, slice_)
            options = candidates(model, ctx, workdir, slice_, base_accuracy, latency)
            model.zero_grad(set_to_none=True)
            if not options:
                reason = "no layer can lose more channels and get faster"
                break
            choice = min(range(len(options)), key=lambda i: (options[i].score, options[i].latency.p50))
            choice, chosen_latency = distributed.broadcast((choice, options[choice].latency))
            best = options[choice]  # measured latencies may differ between ranks: rank 0 decides for all
            held = model
            model = best.model
            losses.extend(recover(model, ctx, step, f"prune step {step} ({best.layer}) recover"))
            point = _point(step, model, ctx, chosen_latency, accuracy(model, val), layer=best.layer,
                           removed=best.removed, channels=best.channels, candidates=len(options))
            info(f"prune step {step}: -{best.removed}/{best.channels} channels of {best.layer}: "
                 f"{point['latency_ms']:.3f} ms, val top-1 {100 * point['val_accuracy']:.2f}%")
            if floor is not None and point["val_accuracy"] < floor:  # back off to the last step that held
                path.append({**point, "kept": False})
                model = held
                reason = f"step {step} fell below the accuracy floor; kept step {step - 1}"
                break
            path.append({**point, "kept": True})
            latency = chosen_latency
            met = fits(latency, goal)
            save_progress(model, ctx, path=path, losses=losses)
            step += 1
        if not met and not reason:
            reason = f"max_steps ({cfg.max_steps}) reached"
    kept = [p for p in path if p.get("kept", True)][-1]
    fit_record = _budget_fit(met, kept, budget, floor, ctx.target, reason)
    info(("[green]" if met else "[red]") + f"prune: {fit_record['message']}")
    macs_after, params_after = count(model, ctx.example[:1])
    details = {
        "goal": "budget", "margin": cfg.margin, "budget_fit": fit_record, "path": path,
        "latency_basis": ("INT8 QDQ graph from ONNX Runtime's static quantizer (same layers as the shipped "
                          "NNCF graph), timed by edgekd's target latency: "
                          + ("measured" if kept["latency_source"] == "measured" else "roofline estimate")),
        "validation": val_source, "candidate_images": len(slice_), "accuracy_guard_status": guarding,
        "macs_before": macs_before, "macs_after": macs_after, "params_before": params_before,
        "params_after": params_after, "epoch_losses": losses, "resumed_from_step": first_step - 1,
        "importance": cfg.importance, "round_to": cfg.round_to, "step_fraction": cfg.step_fraction,
    }
    if sparse_losses:
        details["sparse_training_losses"] = sparse_losses
    return StageOutput(model, details)
