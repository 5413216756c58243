"""What both pruning goals share: the Torch-Pruning pruner, importance, the layers left alone,
recovery by distillation after a step, the accuracy floor a step may not fall below, and the
progress file a killed run continues from."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import Dataset

from edgekd import checkpoints, distributed
from edgekd.config import PruneConfig
from edgekd.data import stratified_subset
from edgekd.errors import BadInputError
from edgekd.training.losses import DistillationObjective
from edgekd.metrics import count
from edgekd.runfolder import atomic_torch_save
from edgekd.stages import StageContext
from edgekd.training.loop import TrainPlan, fit, recalibrate_norms

RECALIBRATION_IMAGES = 2048  # training images the BatchNorm statistics are re-estimated on after a step


def resume_progress(model: nn.Module, ctx: StageContext) -> tuple[nn.Module, dict | None]:
    """A killed run's pruned model and its saved fields, when its progress file is this run's
    (same fingerprint); else the model as given and None."""
    progress = ctx.progress("prune")
    if not progress.is_file():
        return model, None
    state = checkpoints.load(progress)  # weights_only=True
    if state.get("fingerprint") != ctx.fingerprint:
        return model, None
    return checkpoints.restore(state["model"], like=model, source=str(progress)), state


def save_progress(model: nn.Module, ctx: StageContext, **fields) -> None:
    """After each kept step, on rank 0 only: what `resume_progress` reads back."""
    if distributed.is_main():
        atomic_torch_save({"fingerprint": ctx.fingerprint, "model": checkpoints.model_payload(model), **fields},
                          ctx.progress("prune"))
    distributed.barrier()


def validation_set(ctx: StageContext) -> tuple[Dataset, str]:
    """The split every pruning choice is made on: the data bundle's validation split when it has one.
    Without it (older data bundles), a seeded stratified slice of the training images, and the
    record says so: it is not held out from recovery training."""
    val = ctx.data.val
    if val is not None:
        return val, "validation split"
    n = min(2048, len(ctx.data.train) // 5 or 1)
    return stratified_subset(ctx.data.train, n, ctx.profile.seed + 7), f"{n} training images (no validation split)"


def pruning_guard(ctx: StageContext, start_accuracy: float) -> tuple[float | None, str]:
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
        frozen_norm=ctx.profile.distill.frozen_norm,
    )


def recover(model: nn.Module, ctx: StageContext, step: int, label: str) -> list[float]:
    """Distillation from the teacher after a pruning step; the epoch losses. A student whose
    BatchNorm statistics stay frozen while it trains (`[distill] frozen_norm`, a pretrained one)
    has them re-estimated on training images first: with batch statistics instead, one recovery
    epoch took the clip-art example's pruned Lite0 to 37.7% (docs/transfer.md)."""
    if ctx.profile.distill.frozen_norm:
        recalibrate_norms(model, stratified_subset(ctx.data.train, RECALIBRATION_IMAGES, ctx.profile.seed + step))
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
