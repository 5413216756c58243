"""Stage 2: structured pruning. Whole channels leave real tensors (Torch-Pruning's dependency
graph keeps residual adds, depthwise convolutions and the classifier consistent); after each
pruning step the student recovers by distillation from the same teacher.

Two goals (`[prune] goal`):
- "ratio": remove `ratio` of the prunable channels (or of the MACs, with by = "macs") in `steps`.
- "budget": prune step by step until the target's INT8 latency fits its budget less a margin
  (`edgekd.stages.prune.budget`, NetAdapt-style per-layer candidates).

Both stop at the accuracy floor: a step whose recovered validation top-1 falls below it is undone.
"""

from __future__ import annotations

from torch import nn

from edgekd.config import Profile, Target
from edgekd.stages import StageContext, StageOutput
from edgekd.stages.prune.common import make_pruner, prune_until
from edgekd.stages.prune.ratio import prune_to_ratio, reach

__all__ = ["PruneStage", "make_pruner", "prune_until", "prune_to_ratio", "reach"]


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
            from edgekd.stages.prune.budget import prune_to_budget  # exports and times candidates

            return prune_to_budget(model, ctx)
        return prune_to_ratio(model, ctx)
