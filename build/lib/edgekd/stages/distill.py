"""Stage 1: distillation. A fresh student learns from the frozen teacher's softened outputs."""

from __future__ import annotations

from torch import nn

from edgekd.config import Profile, Target
from edgekd.data import augmentations
from edgekd.losses import DistillationObjective
from edgekd.stages import StageContext, StageOutput
from edgekd.train import TrainPlan, fit


class DistillStage:
    name = "distill"

    def enabled(self, profile: Profile) -> bool:
        return True

    def config(self, profile: Profile, target: Target) -> object:
        return {"student": profile.student.model_dump(), "distill": profile.distill.model_dump(), "seed": profile.seed,
                "augment": profile.data.augment}

    def run(self, model: nn.Module, ctx: StageContext) -> StageOutput:
        cfg = ctx.profile.distill
        objective = DistillationObjective(ctx.teacher, cfg, ctx.teacher_logits).with_input_shape(ctx.data.input_shape)
        plan = TrainPlan(
            epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=ctx.profile.data.batch_size,
            seed=ctx.profile.seed, workers=ctx.profile.data.workers, fast_math=ctx.profile.mixed_precision,
            augment=augmentations(ctx.profile.data, ctx.data), min_steps=cfg.min_steps, compile=cfg.compile,
        )
        log = fit(model, objective, ctx.data.train, plan, label="distill",
                  checkpoint=ctx.progress(self.name), fingerprint=ctx.fingerprint)
        details = {"epoch_losses": log.epoch_losses, "resumed_from_epoch": log.resumed_from_epoch,
                   "teacher": log.teacher}
        if log.teacher == "table":
            details["teacher_table_seconds"] = round(ctx.teacher_logits.seconds, 2)
        return StageOutput(model, details)
