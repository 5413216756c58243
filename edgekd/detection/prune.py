"""Structured pruning of a detector with Torch-Pruning, keeping its output layout.

The three output convolutions (class logits, box distances, centerness) keep their channels: they
are the output's layout, which decoding reads. The neck's smoothing conv keeps its channels too:
its map is what feature distillation imitates through the adapter, so pruning would change the
adapter's input. Everything else (backbone, laterals, towers) is pruned by the profile's
[prune] importance, by channels or by MACs.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.config import PruneConfig
from edgekd.detection.data import DetectionSet
from edgekd.detection.model import Detector
from edgekd.metrics import count

IMPORTANCE_BATCH = 32  # training images whose loss gradients give Taylor importance


def kept_layers(model: Detector) -> list[nn.Module]:
    return [model.cls_out, model.box_out, model.ctr_out, *model.smooth.modules()]


def prune_detector(model: Detector, example: torch.Tensor, cfg: PruneConfig, train: DetectionSet, seed: int) -> dict:
    """Prune `model` in place; returns MACs and parameters before and after."""
    import torch_pruning as tp

    from edgekd.detection.train import PaddedTargets, detection_loss
    from edgekd.errors import BadInputError
    from edgekd.stages.prune.common import importance_of, prune_until

    if cfg.importance == "group_norm":
        raise BadInputError("[prune] importance = 'group_norm' needs sparse training, which the detection chain does "
                            "not run; use 'l1', 'l2', 'taylor' or 'random'")
    model.eval()
    before = count(model, example)
    ignored = kept_layers(model) + [m for name, m in model.named_modules() if name in cfg.ignore]
    missing = [name for name in cfg.ignore if name not in dict(model.named_modules())]
    if missing:
        raise BadInputError(f"prune.ignore: no layer '{missing[0]}' in the detector")
    by_macs = cfg.by == "macs"
    pruner = tp.pruner.MetaPruner(
        model, example[:1], importance=importance_of(cfg.importance), global_pruning=cfg.global_pruning,
        pruning_ratio=0.9 if by_macs else cfg.ratio, iterative_steps=90 if by_macs else 1,
        ignored_layers=ignored, round_to=cfg.round_to)

    def gradients() -> None:
        if cfg.importance != "taylor":
            return
        padded = PaddedTargets(train, flip=False)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:IMPORTANCE_BATCH].tolist()
        images = torch.stack([padded[i][0] for i in order])
        targets = torch.stack([padded[i][1] for i in order])
        model.zero_grad()
        sum(detection_loss(model(images), targets, model.spec.num_classes).values()).backward()

    if by_macs:
        prune_until(model, pruner, example, (1 - cfg.ratio) * before[0], prepare=gradients)
    else:
        gradients()
        pruner.step()
    model.zero_grad()
    after = count(model, example)
    return {"macs_before": before[0], "macs_after": after[0], "params_before": before[1], "params_after": after[1],
            "importance": cfg.importance, "by": cfg.by, "ratio": cfg.ratio}
