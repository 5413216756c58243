"""Transfer learning: a pretrained teacher learns the user's classes before it teaches.

A checkpoint for other classes (ImageNet's 1,000) arrives with a fresh head (edgekd.models.weights).
The head learns first, as a linear probe: the frozen network's features of every training image
are computed once, without augmentation, and the head trains on them in full batches, a few
seconds where training it through the network would cost epochs. Then the whole network trains at
a small learning rate with the data's augmentations, starting from the probe's head (a random head
would send large gradients into the pretrained layers). Validation chooses the probe's weight decay
(by cross-entropy), and whether the fine-tuned network beats the probe (by top-1); the record keeps
every number it chose on.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from edgekd.config import Profile, TransferConfig
from edgekd.data import DataBundle, augmentations
from edgekd.errors import BadInputError
from edgekd.training.losses import CrossEntropyObjective
from edgekd.models.weights import head_of
from edgekd.progress import info
from edgekd.training.loop import TrainPlan, accuracy, fit


@dataclass
class TransferRecord:
    """How the teacher was fine-tuned: what the report's teacher entry says."""

    probe_val_accuracy: float
    probe_weight_decay: float
    probe_seconds: float
    finetune_epochs: int
    finetune_val_accuracy: float | None
    finetune_epoch_losses: list[float]
    finetune_seconds: float
    kept: str  # "fine-tuned" or "probe"
    probe_val_losses: dict[str, float]  # validation cross-entropy per weight decay tried

    def as_dict(self) -> dict:
        return asdict(self)


def fine_tune(model: nn.Module, data: DataBundle, profile: Profile, checkpoint=None, fingerprint: str = "") -> TransferRecord:
    """Train `model`'s new head, then the whole network; `model` is left as validation chose."""
    cfg = profile.transfer
    info(f"teacher: fine-tuning its new {data.num_classes}-class head on frozen features ")
    probe = probe_head(model, data, profile)
    record = TransferRecord(probe["val_accuracy"], probe["weight_decay"], probe["seconds"], 0, None, [], 0.0, "probe",
                            probe["val_losses"])
    if cfg.epochs == 0:
        return record
    probe_state = copy.deepcopy(model.state_dict())
    info(f"teacher: fine-tuning the whole network for {cfg.epochs} epochs at lr {cfg.lr:g} ")
    started = time.perf_counter()
    plan = TrainPlan(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=profile.data.batch_size,
                     seed=profile.seed, augment=augmentations(profile.data, data), fast_math=profile.mixed_precision,
                     workers=profile.data.workers, min_steps=cfg.min_steps, warmup=0.1,
                     frozen_norm=cfg.frozen_norm)
    log = fit(model, CrossEntropyObjective(), data.train, plan, label="teacher fine-tune",
              checkpoint=checkpoint, fingerprint=fingerprint)
    record.finetune_epochs = len(log.epoch_losses)
    record.finetune_epoch_losses = log.epoch_losses
    record.finetune_val_accuracy = accuracy(model, data.val)
    record.finetune_seconds = round(time.perf_counter() - started, 2)
    if record.finetune_val_accuracy >= record.probe_val_accuracy:
        record.kept = "fine-tuned"
    else:  # the whole network lost to its own probe on validation: the probe teaches
        model.load_state_dict(probe_state)
    info(f"teacher: probe {100 * record.probe_val_accuracy:.2f}%, fine-tuned {100 * record.finetune_val_accuracy:.2f}% "
         f"on validation; keeping the {record.kept} network")
    return record


def probe_head(model: nn.Module, data: DataBundle, profile: Profile) -> dict:
    """Train `model`'s head alone on its frozen features (in place); what validation chose.
    Also where a pretrained student with a new head starts: its head then fits the labels before
    distillation, instead of sending a random head's gradients into the pretrained layers."""
    cfg = profile.transfer
    head_name = head_of(model)
    if head_name is None:
        raise BadInputError("the pretrained model has no Linear classifier edgekd can find to train")
    head = model.get_submodule(head_name)
    started = time.perf_counter()
    train_x, train_y = features(model, head, data.train)
    val_x, val_y = features(model, head, data.val)
    probes = {wd: train_probe(train_x, train_y, head, cfg, wd, profile.seed) for wd in cfg.head_weight_decays}
    # chosen by validation cross-entropy, not top-1: a heavily decayed head can rank as well while
    # its logits say nothing (near ln C), and distillation learns from the logits
    losses = {wd: _loss(probe, val_x, val_y) for wd, probe in probes.items()}
    best = min(losses, key=lambda wd: (losses[wd], wd))
    head.load_state_dict(probes[best].state_dict())
    return {"val_accuracy": _top1(probes[best], val_x, val_y), "weight_decay": best,
            "val_losses": {f"{wd:g}": round(loss, 4) for wd, loss in losses.items()},
            "seconds": round(time.perf_counter() - started, 2)}


@torch.no_grad()
def features(model: nn.Module, head: nn.Module, dataset, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """What the head sees for every image of a split (in order), read by a hook on its input."""
    from torch.utils.data import DataLoader

    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _, args: seen.append(args[0].flatten(1).float().cpu()))
    model.eval()
    labels = []
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            model(x)
            labels.append(y)
    finally:
        hook.remove()
    return torch.cat(seen), torch.cat(labels)


def train_probe(x: torch.Tensor, y: torch.Tensor, head: nn.Module, cfg: TransferConfig, weight_decay: float,
                seed: int) -> nn.Linear:
    """A copy of the head, trained on the features in full batches (AdamW, cosine decay)."""
    torch.manual_seed(seed)
    probe = copy.deepcopy(head).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=cfg.head_lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.head_steps)
    for _ in range(cfg.head_steps):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(probe(x), y).backward()
        optimizer.step()
        schedule.step()
    return probe.eval()


@torch.no_grad()
def _loss(probe: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(nn.functional.cross_entropy(probe(x), y))


@torch.no_grad()
def _top1(probe: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((probe(x).argmax(1) == y).float().mean())
