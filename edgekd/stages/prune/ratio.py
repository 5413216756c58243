"""The "ratio" goal: remove `ratio` of the prunable channels (or of the MACs, with by = "macs") in
`steps`, recovering after each; a step that falls below the accuracy floor is undone."""

from __future__ import annotations

import copy

from torch import nn

from edgekd.errors import BadInputError
from edgekd.metrics import count
from edgekd.progress import info
from edgekd.stages import StageContext, StageOutput
from edgekd.stages.prune.common import (ignored_layers, make_pruner, prunable_channels, prune_until, pruning_guard,
                                        recover, resume_progress, save_progress, sparse_training, taylor_gradients,
                                        validation_set)
from edgekd.training.loop import accuracy



def reach(model: nn.Module, ctx: StageContext) -> dict:
    """What the ratio goal can remove from this model, found by pruning a copy without training.
    Nothing at all is an error (exit 2); less than asked is reported."""
    cfg = ctx.profile.prune
    trial = copy.deepcopy(model).eval()
    example = ctx.example[:1]
    ignored = ignored_layers(trial, cfg, ctx.data.num_classes)
    channels_before = prunable_channels(trial, ignored)
    macs_before, params_before = count(trial, example)
    if cfg.by == "channels":
        pruner = make_pruner(trial, example, cfg, ctx.data.num_classes, cfg.ratio, cfg.steps)
        for _ in range(cfg.steps):
            if cfg.importance == "taylor":
                taylor_gradients(trial, ctx)
            pruner.step()
    else:
        pruner = make_pruner(trial, example, cfg, ctx.data.num_classes, 0.95, 200)
        prepare = (lambda: taylor_gradients(trial, ctx)) if cfg.importance == "taylor" else (lambda: None)
        prune_until(trial, pruner, example, macs_before * (1 - cfg.ratio), prepare)
    macs_after, params_after = count(trial, example)
    channels_after = prunable_channels(trial, ignored)
    removed = 1 - (channels_after / channels_before if cfg.by == "channels" else macs_after / macs_before)
    widths = sorted({m.out_channels for m in trial.modules() if isinstance(m, nn.Conv2d)})
    if cfg.ratio > 0 and params_after == params_before:
        raise BadInputError(
            f"prune.ratio {cfg.ratio:g} ({cfg.by}) removes nothing from this student ({params_before:,} parameters, "
            f"conv widths {widths[0]}..{widths[-1]}, channel counts kept in multiples of round_to = {cfg.round_to}); "
            f"lower prune.ratio or round_to, widen the student, or set prune.enabled = false")
    asked = cfg.ratio
    reach = {"asked": asked, "by": cfg.by, "reachable": round(removed, 4), "short": removed < asked - 0.02,
             "over": removed > asked + 0.02}
    if reach["short"]:
        reach["note"] = (f"prune.ratio {asked:g} asks for {100 * asked:.0f}% of the {cfg.by}; the dependency graph "
                         f"(channel counts in multiples of {cfg.round_to}) allows {100 * removed:.1f}%: pruned that far")
        info(f"[yellow]prune: {reach['note']}")
    elif reach["over"]:  # by MACs on narrow layers: one channel step of round_to can remove several points
        reach["note"] = (f"prune.ratio {asked:g} asks for {100 * asked:.0f}% of the {cfg.by}; channel counts move in "
                         f"multiples of {cfg.round_to}, and the first count that reaches it removes {100 * removed:.1f}%")
        info(f"prune: {reach['note']}")
    return reach


def prune_to_ratio(model: nn.Module, ctx: StageContext) -> StageOutput:
    cfg = ctx.profile.prune
    example = ctx.example[:1]
    macs_before, params_before = count(model, example)
    first_step, losses, steps_done, sparse_losses = 0, [], [], []
    model, resumed = resume_progress(model, ctx)  # a killed run: continue after the last recovered step
    if resumed is not None:
        first_step, losses = resumed["step"] + 1, resumed["losses"]
        macs_before, params_before = resumed["macs_before"], resumed["params_before"]
        steps_done, reachable = resumed.get("steps", []), resumed.get("reach")
    else:
        reachable = reach(model, ctx)
        if cfg.importance == "group_norm":
            sparse_losses = sparse_training(model, ctx)
    model.eval()
    remaining = cfg.steps - first_step
    if cfg.by == "channels":  # the ratio still to remove, relative to the channels left now
        left_now = 1 - cfg.ratio * first_step / cfg.steps
        ratio = 1 - (1 - cfg.ratio) / left_now if remaining else 0.0
        pruner = make_pruner(model, example, cfg, ctx.data.num_classes, ratio, max(1, remaining))
    else:  # by MACs: many small channel steps until each round's MAC goal is met
        pruner = make_pruner(model, example, cfg, ctx.data.num_classes, 0.95, 200)
    val, val_source = validation_set(ctx) if ctx.accuracy_floor is not None else (None, None)
    floor, guarding = pruning_guard(ctx, accuracy(model, val)) if val is not None else (None, "no accuracy budget")
    if val is not None and floor is None:
        info(f"[yellow]prune: {guarding}")
    guard = None
    for step in range(first_step, cfg.steps):
        held = copy.deepcopy(model) if floor is not None else None
        if cfg.by == "channels":
            if cfg.importance == "taylor":
                taylor_gradients(model, ctx)
            pruner.step()
        else:
            prepare = (lambda: taylor_gradients(model, ctx)) if cfg.importance == "taylor" else (lambda: None)
            prune_until(model, pruner, example, macs_before * (1 - cfg.ratio * (step + 1) / cfg.steps), prepare)
        losses.extend(recover(model, ctx, step, f"prune {step + 1}/{cfg.steps} recover"))
        macs, params = count(model, example)
        record = {"step": step + 1, "macs": macs, "params": params}
        if floor is not None:
            record["val_accuracy"] = accuracy(model, val)
            if record["val_accuracy"] < floor:  # undo this step and stop: the last step that held ships
                model = held
                guard = {"stopped_at_step": step + 1, "val_accuracy": record["val_accuracy"], "floor": floor,
                         "kept_step": step, "message": (
                             f"prune step {step + 1}: validation top-1 {100 * record['val_accuracy']:.2f}% is below the "
                             f"floor {100 * floor:.2f}%; kept step {step} ({count(model, example)[0]:,} MACs)")}
                info(f"[yellow]{guard['message']}")
                steps_done.append({**record, "kept": False})
                break
        steps_done.append({**record, "kept": True})
        save_progress(model, ctx, step=step, losses=losses, macs_before=macs_before, params_before=params_before,
                      steps=steps_done, reach=reachable)
    macs_after, params_after = count(model, example)
    details = {
        "goal": "ratio", "macs_before": macs_before, "macs_after": macs_after,
        "params_before": params_before, "params_after": params_after,
        "resumed_from_step": first_step, "epoch_losses": losses, "steps": steps_done, "reach": reachable,
        "importance": cfg.importance, "round_to": cfg.round_to,
    }
    if sparse_losses:
        details["sparse_training_losses"] = sparse_losses
    details["accuracy_guard_status"] = guarding
    if floor is not None:
        details["accuracy_floor"] = floor
        details["validation"] = val_source
    if guard is not None:
        details["accuracy_guard"] = guard
    return StageOutput(model, details)
