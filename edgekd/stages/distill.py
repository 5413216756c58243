"""Stage 1: distillation. A fresh student learns from the frozen teacher's softened outputs.

Guarded like QAT: an attempt whose loss is not finite, or whose last epoch ends at more than
DIVERGED_RATIO times its best epoch's loss (it blew up and did not come back), is thrown away and
the fresh student is trained again at RETRY_LR_FACTOR of the learning rate, up to MAX_ATTEMPTS
times. On a 2,000-image train/val/test tree the default recipe's distillation went from a loss of
7.4 to 158 and stayed near 22: a dead student at 15.5% (docs/benchmarks.md). The record keeps
every attempt."""

from __future__ import annotations

import copy

from torch import nn

from edgekd.config import Profile, Target
from edgekd.data import augmentations
from edgekd.errors import TrainingDiverged
from edgekd.training.losses import DistillationObjective
from edgekd.progress import info
from edgekd.stages import StageContext, StageOutput
from edgekd.training.loop import TrainPlan, fit

DIVERGED_RATIO = 2.0
RETRY_LR_FACTOR = 0.25
MAX_ATTEMPTS = 3
MIN_EPOCHS_TO_JUDGE = 4  # a run of fewer epochs has no best epoch to fall back from


def diverged(epoch_losses: list[float]) -> str | None:
    """Why a finished run's loss curve says it diverged, or None: its last epoch ended far above its best."""
    if len(epoch_losses) < MIN_EPOCHS_TO_JUDGE:
        return None
    best = min(epoch_losses)
    if best > 0 and epoch_losses[-1] > DIVERGED_RATIO * best:
        epoch = epoch_losses.index(best) + 1
        return f"its last epoch's loss {epoch_losses[-1]:.4g} is over {DIVERGED_RATIO:g}x its best ({best:.4g}, epoch {epoch})"
    return None


class DistillStage:
    name = "distill"

    def _probe_new_head(self, model: nn.Module, ctx: StageContext) -> dict | str | None:
        """A pretrained student with a new head trains that head on its frozen features first, so a
        random head's gradients do not wreck the pretrained layers. Here, not where the student is
        built, so a resumed run whose distillation is done does not probe again; a run resumed
        mid-distillation loads its checkpoint over the head, so it skips the probe too."""
        start = ctx.student_start
        if start is None or not start.get("new_head"):
            return None
        if ctx.progress(self.name).exists():
            return "skipped: resumed from the distill checkpoint"
        from edgekd.stages.transfer import probe_head

        info("student: training its new head on its frozen pretrained features")
        return probe_head(model, ctx.data, ctx.profile)

    def enabled(self, profile: Profile) -> bool:
        return True

    def config(self, profile: Profile, target: Target) -> object:
        return {"student": profile.student.model_dump(), "distill": profile.distill.model_dump(), "seed": profile.seed,
                "augment": profile.data.augment}

    def run(self, model: nn.Module, ctx: StageContext) -> StageOutput:
        cfg = ctx.profile.distill
        objective = DistillationObjective(ctx.teacher, cfg, ctx.teacher_logits).with_input_shape(ctx.data.input_shape)
        head_probe = self._probe_new_head(model, ctx)
        fresh = copy.deepcopy(model.state_dict())  # what a retry starts from: after the head's probe
        attempts: list[dict] = []
        lr = cfg.lr
        for attempt in range(MAX_ATTEMPTS):
            plan = TrainPlan(
                epochs=cfg.epochs, lr=lr, weight_decay=cfg.weight_decay, batch_size=ctx.profile.data.batch_size,
                seed=ctx.profile.seed, workers=ctx.profile.data.workers, fast_math=ctx.profile.mixed_precision,
                augment=augmentations(ctx.profile.data, ctx.data), min_steps=cfg.min_steps, compile=cfg.compile,
                frozen_norm=cfg.frozen_norm,
            )
            # each attempt its own progress file, so a killed retry resumes as a retry
            progress = ctx.progress(self.name if attempt == 0 else f"{self.name}-retry{attempt}")
            try:
                log = fit(model, objective, ctx.data.train, plan, label="distill" if attempt == 0 else "distill retry",
                          checkpoint=progress, fingerprint=ctx.fingerprint)
                problem = diverged(log.epoch_losses)
            except TrainingDiverged as error:
                if attempt == MAX_ATTEMPTS - 1:  # every attempt: the first one's words, and the retries'
                    first = next((a["diverged"] for a in attempts if a["diverged"]), str(error))
                    retried = " and ".join(f"{x:g}" for x in [a["lr"] for a in attempts[1:]] + [lr])
                    raise TrainingDiverged(f"{first}; retried from the fresh student at lr {retried}: it diverged "
                                           f"again") from error
                log, problem = None, str(error)
            attempts.append({"lr": lr, "epoch_losses": log.epoch_losses if log else [], "diverged": problem})
            if problem is None or attempt == MAX_ATTEMPTS - 1:
                break
            info(f"[yellow]distill at lr {lr:g} diverged: {problem}; training the fresh student again at "
                 f"lr {lr * RETRY_LR_FACTOR:g}")
            model.load_state_dict(fresh)
            lr *= RETRY_LR_FACTOR
        details = {"epoch_losses": log.epoch_losses, "resumed_from_epoch": log.resumed_from_epoch,
                   "teacher": log.teacher, "lr": lr}
        if len(attempts) > 1:
            details["divergence_guard"] = {"attempts": attempts, "kept_lr": lr,
                                           "still_diverged": attempts[-1]["diverged"]}
        if ctx.student_start is not None:
            details["student_weights"] = ctx.student_start if head_probe is None else {**ctx.student_start,
                                                                                          "head_probe": head_probe}
        if log.teacher == "table":
            details["teacher_table_seconds"] = round(ctx.teacher_logits.seconds, 2)
        return StageOutput(model, details)
