"""Stage 2: structured pruning. Whole channels leave real tensors (Torch-Pruning's dependency
graph keeps residual adds, depthwise convolutions and the classifier consistent); after each
pruning step the student recovers by distillation from the same teacher."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from edgekd import checkpoints, distributed
from edgekd.config import Profile, PruneConfig, Target
from edgekd.errors import BadInputError
from edgekd.losses import DistillationObjective
from edgekd.metrics import count
from edgekd.runfolder import atomic_torch_save
from edgekd.stages import StageContext, StageOutput
from edgekd.train import TrainPlan, fit


def _importance(name: str):
    return {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
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
                ratio: float, steps: int) -> tp.pruner.MetaPruner:
    return tp.pruner.MetaPruner(
        model,
        example[:1],
        importance=_importance(cfg.importance),
        global_pruning=cfg.global_pruning,
        pruning_ratio=ratio,
        iterative_steps=steps,
        ignored_layers=ignored_layers(model, cfg, num_classes),
        round_to=4,
    )


def prune_until(model: nn.Module, pruner: tp.pruner.MetaPruner, example: torch.Tensor, max_macs: float,
                prepare=lambda: None) -> int:
    """Small channel steps until the model needs at most `max_macs` per image (or the pruner's cap)."""
    while count(model, example)[0] > max_macs and pruner.current_step < pruner.iterative_steps:
        prepare()
        pruner.step()
    return count(model, example)[0]


def _taylor_gradients(model: nn.Module, ctx: StageContext) -> None:
    """Taylor importance needs gradients: from one fixed batch, identical on every rank."""
    images = torch.stack([ctx.data.train[i][0] for i in range(min(256, len(ctx.data.train)))])
    labels = torch.tensor([ctx.data.train[i][1] for i in range(len(images))])
    model.zero_grad()
    nn.functional.cross_entropy(model(images), labels).backward()


class PruneStage:
    name = "prune"

    def enabled(self, profile: Profile) -> bool:
        return profile.prune.enabled

    def config(self, profile: Profile, target: Target) -> object:
        return {"prune": profile.prune.model_dump(), "distill": profile.distill.model_dump(), "seed": profile.seed}

    def run(self, model: nn.Module, ctx: StageContext) -> StageOutput:
        cfg = ctx.profile.prune
        example = ctx.example[:1]
        macs_before, params_before = count(model, example)
        first_step, losses = 0, []
        progress = ctx.progress(self.name)
        if progress.is_file():  # a killed run: continue after the last recovered step
            state = checkpoints.load(progress)  # weights_only=True
            if state.get("fingerprint") == ctx.fingerprint:
                model = checkpoints.restore(state["model"], like=model, source=str(progress))
                first_step, losses = state["step"] + 1, state["losses"]
                macs_before, params_before = state["macs_before"], state["params_before"]
        model.eval()
        remaining = cfg.steps - first_step
        if cfg.by == "channels":  # the ratio still to remove, relative to the channels left now
            left_now = 1 - cfg.ratio * first_step / cfg.steps
            ratio = 1 - (1 - cfg.ratio) / left_now if remaining else 0.0
            pruner = make_pruner(model, example, cfg, ctx.data.num_classes, ratio, max(1, remaining))
        else:  # by MACs: many small channel steps until each round's MAC goal is met
            pruner = make_pruner(model, example, cfg, ctx.data.num_classes, 0.95, 200)
        objective = DistillationObjective(ctx.teacher, ctx.profile.distill).with_input_shape(ctx.data.input_shape)
        for step in range(first_step, cfg.steps):
            if cfg.by == "channels":
                if cfg.importance == "taylor":
                    _taylor_gradients(model, ctx)
                pruner.step()
            else:
                prepare = (lambda: _taylor_gradients(model, ctx)) if cfg.importance == "taylor" else (lambda: None)
                prune_until(model, pruner, example, macs_before * (1 - cfg.ratio * (step + 1) / cfg.steps), prepare)
            model.zero_grad(set_to_none=True)
            plan = TrainPlan(
                epochs=cfg.epochs_per_step, lr=cfg.lr, weight_decay=ctx.profile.distill.weight_decay,
                batch_size=ctx.profile.data.batch_size, seed=ctx.profile.seed + step + 1, warmup=0.1,
                workers=ctx.profile.data.workers, fast_math=True, min_steps=cfg.min_steps_per_step,
            )
            log = fit(model, objective, ctx.data.train, plan, label=f"prune {step + 1}/{cfg.steps} recover")
            losses.extend(log.epoch_losses)
            if distributed.is_main():
                atomic_torch_save({"fingerprint": ctx.fingerprint, "model": checkpoints.model_payload(model), "step": step, "losses": losses,
                                   "macs_before": macs_before, "params_before": params_before}, progress)
            distributed.barrier()
        macs_after, params_after = count(model, example)
        return StageOutput(model, {
            "macs_before": macs_before, "macs_after": macs_after,
            "params_before": params_before, "params_after": params_after,
            "resumed_from_step": first_step, "epoch_losses": losses,
        })
