"""Stage 2: structured pruning. Whole channels leave real tensors (Torch-Pruning's dependency
graph keeps residual adds, depthwise convolutions and the classifier consistent); after each
pruning step the student recovers by distillation from the same teacher.

Two goals (`[prune] goal`):
- "ratio": remove `ratio` of the prunable channels (or of the MACs, with by = "macs") in `steps`.
- "budget": prune step by step until the target's INT8 latency fits its budget less a margin
  (`edgekd.stages.prune_budget`, NetAdapt-style per-layer candidates).

Both stop at the accuracy floor: a step whose recovered validation top-1 falls below it is undone.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import Dataset

from edgekd import checkpoints, distributed
from edgekd.config import Profile, PruneConfig, Target
from edgekd.data import stratified_subset
from edgekd.errors import BadInputError
from edgekd.losses import DistillationObjective
from edgekd.metrics import count
from edgekd.progress import info
from edgekd.runfolder import atomic_torch_save
from edgekd.stages import StageContext, StageOutput
from edgekd.train import TrainPlan, accuracy, fit


# ---------------------------------------------------------------- data helpers


def validation_set(ctx: StageContext) -> tuple[Dataset, str]:
    """The split every pruning choice is made on: the data bundle's validation split when it has one.
    Without it (older data bundles), a seeded stratified slice of the training images, and the
    record says so: it is not held out from recovery training."""
    val = ctx.data.val
    if val is not None:
        return val, "validation split"
    n = min(2048, len(ctx.data.train) // 5 or 1)
    return stratified_subset(ctx.data.train, n, ctx.profile.seed + 7), f"{n} training images (no validation split)"


def accuracy_floor(ctx: StageContext, start_accuracy: float) -> tuple[float | None, str]:
    """The floor pruning guards, and why none when it guards none: a student already below the
    floor when pruning starts has no step that held to back off to (the run's accuracy verdict
    names the stage where it fell below), so pruning then proceeds as configured."""
    floor = ctx.accuracy_floor
    if floor is None:
        return None, "no accuracy budget"
    if start_accuracy < floor:
        return None, (f"not guarded: the student is already below the accuracy floor when pruning starts "
                      f"({100 * start_accuracy:.2f}% < {100 * floor:.2f}% on validation)")
    return floor, f"guarded: validation top-1 must stay at or above {100 * floor:.2f}%"


# ---------------------------------------------------------------- importance and pruners


def importance_of(name: str):
    return {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "group_norm": lambda: tp.importance.GroupMagnitudeImportance(p=2),  # on group-lasso-sparsified weights
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "random": lambda: tp.importance.RandomImportance(),
    }[name]()


def ignored_layers(model: nn.Module, cfg: PruneConfig, num_classes: int) -> list[nn.Module]:
    """The classifier (every Linear producing the class logits) plus the layers the profile names."""
    modules = dict(model.named_modules())
    ignored = [m for m in modules.values() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    for name in cfg.ignore:
        if name not in modules:
            raise BadInputError(f"prune.ignore: no layer '{name}' in the student")
        ignored.append(modules[name])
    return ignored


def make_pruner(model: nn.Module, example: torch.Tensor, cfg: PruneConfig, num_classes: int,
                ratio: float, steps: int) -> tp.pruner.BasePruner:
    kwargs = dict(
        importance=importance_of(cfg.importance),
        global_pruning=cfg.global_pruning,
        pruning_ratio=ratio,
        iterative_steps=steps,
        ignored_layers=ignored_layers(model, cfg, num_classes),
        round_to=cfg.round_to,
    )
    if cfg.importance == "group_norm":  # DepGraph's group-level sparsity: regularise, then prune by group norm
        return tp.pruner.GroupNormPruner(model, example[:1], reg=cfg.reg, **kwargs)
    return tp.pruner.MetaPruner(model, example[:1], **kwargs)


def prune_until(model: nn.Module, pruner: tp.pruner.BasePruner, example: torch.Tensor, max_macs: float,
                prepare=lambda: None) -> int:
    """Small channel steps until the model needs at most `max_macs` per image (or the pruner's cap)."""
    while count(model, example)[0] > max_macs and pruner.current_step < pruner.iterative_steps:
        prepare()
        pruner.step()
    return count(model, example)[0]


def taylor_gradients(model: nn.Module, ctx: StageContext) -> None:
    """Taylor importance needs gradients: from one seeded, class-stratified batch, identical on every rank."""
    batch = stratified_subset(ctx.data.train, ctx.profile.prune.importance_samples, ctx.profile.seed)
    images = torch.stack([batch[i][0] for i in range(len(batch))])
    labels = torch.tensor([int(batch[i][1]) for i in range(len(batch))])
    model.zero_grad()
    nn.functional.cross_entropy(model(images), labels).backward()


def prunable_channels(model: nn.Module, ignored: list[nn.Module]) -> int:
    """Output channels of every Conv2d and Linear the pruner may touch."""
    skip = {id(m) for m in ignored}
    return sum(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in skip)


def _plan(ctx: StageContext, seed: int, epochs: int | None = None) -> TrainPlan:
    cfg = ctx.profile.prune
    return TrainPlan(
        epochs=epochs or cfg.epochs_per_step, lr=cfg.lr, weight_decay=ctx.profile.distill.weight_decay,
        batch_size=ctx.profile.data.batch_size, seed=seed, warmup=0.1,
        workers=ctx.profile.data.workers, fast_math=ctx.profile.mixed_precision, min_steps=cfg.min_steps_per_step,
    )


def recover(model: nn.Module, ctx: StageContext, step: int, label: str) -> list[float]:
    """Distillation from the teacher after a pruning step; the epoch losses."""
    objective = DistillationObjective(ctx.teacher, ctx.profile.distill, ctx.teacher_logits).with_input_shape(ctx.data.input_shape)
    model.zero_grad(set_to_none=True)
    return fit(model, objective, ctx.data.train, _plan(ctx, ctx.profile.seed + step + 1), label=label).epoch_losses


def sparse_training(model: nn.Module, ctx: StageContext) -> list[float]:
    """group_norm: `sparse_epochs` of distillation with Torch-Pruning's group-lasso gradient
    (GroupNormPruner.regularize after every backward pass), so whole groups shrink before they go."""
    cfg = ctx.profile.prune
    if cfg.sparse_epochs == 0:
        return []
    pruner = make_pruner(model, ctx.example, cfg, ctx.data.num_classes, cfg.ratio, 1)
    pruner.update_regularizer()
    objective = DistillationObjective(ctx.teacher, ctx.profile.distill, ctx.teacher_logits).with_input_shape(ctx.data.input_shape)
    log = fit(model, objective, ctx.data.train, _plan(ctx, ctx.profile.seed, cfg.sparse_epochs),
              label="prune sparse training", after_backward=lambda: pruner.regularize(model))
    model.zero_grad(set_to_none=True)
    return log.epoch_losses


# ---------------------------------------------------------------- the stage


class PruneStage:
    name = "prune"

    def enabled(self, profile: Profile) -> bool:
        return profile.prune.enabled

    def config(self, profile: Profile, target: Target) -> object:
        config = {"prune": profile.prune.model_dump(), "distill": profile.distill.model_dump(), "seed": profile.seed}
        if profile.prune.goal == "budget":  # the result depends on the target's budget and latency model
            config["target"] = target.model_dump(mode="json")
        return config

    def run(self, model: nn.Module, ctx: StageContext) -> StageOutput:
        if ctx.profile.prune.goal == "budget":
            from edgekd.stages.prune_budget import prune_to_budget

            return prune_to_budget(model, ctx)
        return prune_to_ratio(model, ctx)


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
    progress = ctx.progress("prune")
    resumed = None
    if progress.is_file():  # a killed run: continue after the last recovered step
        state = checkpoints.load(progress)  # weights_only=True
        if state.get("fingerprint") == ctx.fingerprint:
            resumed = state
            model = checkpoints.restore(state["model"], like=model, source=str(progress))
            first_step, losses = state["step"] + 1, state["losses"]
            macs_before, params_before = state["macs_before"], state["params_before"]
            steps_done, reachable = state.get("steps", []), state.get("reach")
    if resumed is None:
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
    floor, guarding = accuracy_floor(ctx, accuracy(model, val)) if val is not None else (None, "no accuracy budget")
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
        if distributed.is_main():
            atomic_torch_save({"fingerprint": ctx.fingerprint, "model": checkpoints.model_payload(model), "step": step,
                               "losses": losses,
                               "macs_before": macs_before, "params_before": params_before, "steps": steps_done,
                               "reach": reachable}, progress)
        distributed.barrier()
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
