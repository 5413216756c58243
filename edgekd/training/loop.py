"""One training loop for every stage: teacher, distillation, pruning recovery and QAT.

The stage picks the objective (labels, or the teacher); the loop owns the optimizer, the
schedule, DDP, epoch checkpoints for resuming, and the progress bar. It is seeded so the same
command and seed give the same model.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from edgekd import checkpoints, distributed
from edgekd.training.memory import keep_freed_memory
from edgekd.training.workers import sigchld_restored
from edgekd.progress import progress_bar
from edgekd.runfolder import atomic_torch_save
from edgekd.training.teacher_logits import FINITE_VIEWS, IndexedDataset


@dataclass(frozen=True)
class TrainPlan:
    """A stage's schedule. Epochs are the convenience; `min_steps` makes sure a small data set
    still gets enough optimizer steps (4,000 images at batch 256 are only 16 steps an epoch), and
    the one-cycle warm-up and decay follow the steps actually taken."""

    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    seed: int
    warmup: float = 0.15  # share of steps spent raising the learning rate (one-cycle schedule)
    augment: tuple[str, ...] = ()  # "hflip", "shift" (see DataConfig.augment)
    fast_math: bool = False  # bf16 autocast + channels-last where the CPU/GPU has bf16 units (not for QAT)
    workers: int = 0
    min_steps: int = 0
    compile: bool = False  # torch.compile the training step (and a distillation teacher's forward)
    # BatchNorm keeps its running statistics (eval mode) while its scale and shift train: fine-tuning
    # a pretrained network on a small data set, whose batches would replace ImageNet's statistics
    frozen_norm: bool = False

    def epochs_for(self, steps_per_epoch: int) -> int:
        """Epochs to run: the plan's, or more when that would be fewer than `min_steps` steps."""
        return max(self.epochs, math.ceil(self.min_steps / max(1, steps_per_epoch)))


@dataclass
class TrainLog:
    epoch_losses: list[float] = field(default_factory=list)
    resumed_from_epoch: int = 0
    teacher: str = ""  # distilling stages: "table" (logits looked up, edgekd.training.teacher_logits) or "online"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _flip(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror a random half of the batch; also which images were mirrored (their view number)."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None].to(x.device), x.flip(-1), x), flip.long()


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by a random whole number of pixels, up to 1/8 of its side, repeating
    the edge pixels into the gap (no black or grey borders that the test images never have)."""
    n, _, h, w = x.shape
    limit = max(1, round(min(h, w) / 8))
    offsets = torch.randint(-limit, limit + 1, (n, 2), generator=generator).float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2 * offsets[:, 0] / w
    theta[:, 1, 2] = 2 * offsets[:, 1] / h
    grid = nn.functional.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


def _crop(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The random-resized crop: per image a window of 35-100% of its area, aspect 3:4 to 4:3
    (log-uniform), anywhere inside it, resized back to the full size. Scale 0.35, not
    torchvision's 0.08: a small data set's 160-px pictures keep the object in view."""
    n, _, h, w = x.shape
    area = 0.35 + 0.65 * torch.rand(n, generator=generator)
    aspect = torch.exp((torch.rand(n, generator=generator) * 2 - 1) * math.log(4 / 3))
    sx = torch.sqrt(area * aspect).clamp(max=1.0)  # window width as a share of the image's
    sy = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sx)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sy)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = sx, sy, cx, cy
    grid = nn.functional.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation, each by a random factor in 0.8-1.2 per image. Done on
    the normalised batch: contrast and saturation scale around the image's (or the pixel's grey)
    mean, which normalisation moves but does not change in kind; brightness scales the distance
    from the darkest value in the batch's own units."""
    n = x.shape[0]

    def factor() -> torch.Tensor:
        return (0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)).to(x.device, x.dtype)

    low = x.amin(dim=(1, 2, 3), keepdim=True)
    x = low + (x - low) * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * factor()
    if x.shape[1] == 3:
        grey = x.mean(dim=1, keepdim=True)
        x = grey + (x - grey) * factor()
    return x


def augment(x: torch.Tensor, names: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    return augment_with_views(x, names, generator)[0]


def augment_with_views(x: torch.Tensor, names: tuple[str, ...],
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The augmented batch, and each image's view number where `names` makes finitely many views
    (numbered as `teacher_logits.apply_view` reads them), else None."""
    view = torch.zeros(x.shape[0], dtype=torch.long)
    for name in names:
        if name == "hflip":
            x, flipped = _flip(x, generator)
            view = None if view is None else view * FINITE_VIEWS["hflip"] + flipped
        elif name == "shift":
            x, view = _shift(x, generator), None
        elif name == "crop":
            x, view = _crop(x, generator), None
        elif name == "jitter":
            x, view = _jitter(x, generator), None
        else:
            raise ValueError(f"unknown augmentation '{name}'")
    return x, view


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # native bf16 only (AVX512-BF16 or AMX): oneDNN also "supports" bf16 on plain AVX-512 by emulation,
    # and there a bf16 training step takes twice as long as an fp32 one (measured on an AVX-512 Xeon)
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return bool(native and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def mixed_precision_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the device has it; fp16 (with a gradient scaler) on older GPUs; else none."""
    if _bf16_supported(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


class CompiledOrEager:
    """`torch.compile(module)` where it compiles; the module itself, with one line saying so,
    where it does not (no C compiler, an unsupported layer). On a 2-core CPU the compiled
    teacher's training step ran 1.51x faster after ~30 s of compiling (`benchmarks/compile_speed.py`),
    so it is worth it for stages of several epochs, not for a one-epoch recovery."""

    def __init__(self, module: nn.Module, label: str):
        self.module = module
        self.label = label
        self.compiled = torch.compile(module)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as error:  # a compiler failure: the eager module still trains the same model
                from edgekd.progress import info

                first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
                info(f"{self.label}: torch.compile failed ({first}); training without it")
                self.compiled = None
        return self.module(*args)


def _stop_if_diverged(loss: torch.Tensor, label: str, lr: float, epoch: int, step: int) -> None:
    """A NaN or infinite loss is a recipe problem (exit 2), found at the step it happens; under
    torchrun every rank sees the same verdict, so all stop together."""
    value = distributed.mean_across_ranks(float(loss.detach()))
    if not math.isfinite(value):
        from edgekd.errors import TrainingDiverged

        raise TrainingDiverged(f"{label}: training diverged (loss {value} at epoch {epoch + 1}, step {step + 1}) "
                            f"with learning rate {lr:g}; lower the stage's lr in the profile")


def fit(
    model: nn.Module,
    objective: nn.Module,
    dataset: Dataset,
    plan: TrainPlan,
    *,
    label: str,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    after_backward=None,
) -> TrainLog:
    """Train `model` in place; with `checkpoint`, save every epoch and resume from the last one.
    `after_backward()`, if given, runs after each backward pass, before the optimizer step."""
    seed_everything(plan.seed)
    keep_freed_memory()  # each step reuses the last one's memory instead of faulting in fresh pages
    device = distributed.device()
    amp_dtype = mixed_precision_dtype(device) if plan.fast_math else None
    # a distilling objective whose teacher logits are in a table for this split and these views
    # reads them there instead of running the teacher (edgekd.training.teacher_logits)
    table = getattr(objective, "teacher_logits", None)
    table = table if table is not None and table.serves(dataset, plan.augment) else None
    if table is not None:
        table.prepare(plan.augment, device, amp_dtype)
        dataset = IndexedDataset(dataset)
    trainable = objective.trainable(model).to(device)
    objective.to(device)
    wrapped = trainable
    if distributed.is_distributed():
        wrapped = nn.parallel.DistributedDataParallel(trainable, device_ids=[device] if device.type == "cuda" else None)
    sampler = DistributedSampler(
        dataset, num_replicas=distributed.world_size(), rank=distributed.rank(), shuffle=True, seed=plan.seed
    )
    drop_last = len(dataset) // distributed.world_size() > plan.batch_size
    loader = DataLoader(dataset, batch_size=plan.batch_size, sampler=sampler, num_workers=plan.workers,
                        drop_last=drop_last, pin_memory=device.type == "cuda")
    parameters = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=plan.lr, momentum=0.9, nesterov=True, weight_decay=plan.weight_decay)
    epochs = plan.epochs_for(len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=plan.lr, total_steps=max(1, epochs * len(loader)), pct_start=plan.warmup
    )
    fast = amp_dtype is not None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    if fast:
        trainable.to(memory_format=torch.channels_last)
    forward = CompiledOrEager(wrapped, label) if plan.compile else wrapped
    if plan.compile:
        from edgekd.progress import info

        info(f"{label}: compiling the training step with torch.compile (its first step is slow; the rest are faster)")
    if plan.compile and hasattr(objective, "compile_teacher") and table is None:
        objective.compile_teacher(label)
    log = TrainLog(teacher="" if not hasattr(objective, "teacher_logits") else "table" if table is not None else "online")
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = checkpoints.load(checkpoint)  # weights_only=True
        if state.get("fingerprint") == fingerprint and state.get("world_size") == distributed.world_size():
            trainable.load_state_dict(state["trainable"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            log.epoch_losses = list(state["losses"])
            start = log.resumed_from_epoch = state["epoch"] + 1
    with sigchld_restored():  # worker processes leave torch's SIGCHLD handler behind
        for epoch in range(start, epochs):
            sampler.set_epoch(epoch)
            augment_rng = torch.Generator().manual_seed(plan.seed * 1000 + epoch * 10 + distributed.rank())
            objective.train()
            wrapped.train()
            if plan.frozen_norm:
                for module in trainable.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
            total, batches = 0.0, 0
            with progress_bar(f"{label} epoch {epoch + 1}/{epochs}", len(loader)) as advance:
                for step, batch in enumerate(loader, start=epoch * len(loader)):
                    if hasattr(objective, "set_progress"):  # losses with a warm-up (DKD) read how far training is
                        objective.set_progress(step / max(1, epochs * len(loader)))
                    x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
                    x, view = augment_with_views(x, plan.augment, augment_rng)
                    known = None if table is None else table.lookup(batch[2], view, device)
                    if fast:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=fast):
                        output = forward(x)
                        loss = objective(output, x, y) if known is None else objective(output, x, y, teacher_logits=known)
                    _stop_if_diverged(loss, label, plan.lr, epoch, batches)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if after_backward is not None:  # e.g. group-lasso gradients for sparse training before pruning
                        scaler.unscale_(optimizer)  # it adds to true gradients, not loss-scaled ones
                        after_backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    total += float(loss.detach())
                    batches += 1
                    advance(loss=total / batches)
            log.epoch_losses.append(distributed.mean_across_ranks(total / max(1, batches)))
            if checkpoint is not None and distributed.is_main():
                atomic_torch_save(
                    {
                        "fingerprint": fingerprint,
                        "world_size": distributed.world_size(),
                        "epoch": epoch,
                        "trainable": trainable.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": torch.get_rng_state(),
                        "losses": log.epoch_losses,
                    },
                    checkpoint,
                )
            distributed.barrier()
    if fast:
        trainable.to(memory_format=torch.contiguous_format)
    trainable.cpu()  # later stages count, export and prune on the CPU
    for part in (trainable, objective):  # hint objectives hook into both models: unhook them
        if hasattr(part, "close"):
            part.close()
    model.eval()
    return log


@torch.no_grad()
def recalibrate_norms(model: nn.Module, dataset: Dataset, batch_size: int = 64) -> int:
    """Re-estimate every BatchNorm's running mean and variance on `dataset` (a cumulative average,
    no training), leaving the model in eval mode; returns the BatchNorms re-estimated. After a
    pruning step a layer reads fewer channels, so the statistics of the BatchNorm after it describe
    outputs it no longer makes; a student that trains with frozen statistics needs them measured
    again first."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative: every batch counts the same
    model.eval()
    for m in norms:
        m.train()
    device = next(iter(model.parameters()), torch.empty(0)).device
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            model(batch[0].to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return len(norms)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over a whole split (in order)."""
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    logits, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits.append(model(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> float:
    """Top-1 (0..1) of a PyTorch model over a split."""
    logits, labels = predict(model, dataset, batch_size)
    return float((logits.argmax(1) == labels).float().mean())


evaluate = accuracy


def correct_onnx(runner, dataset: Dataset, batch_size: int = 256) -> np.ndarray:
    """Whether an exported model (any runner with `.run(images)`) gets each image of a split
    right, in order: what a paired comparison of two models on the same images needs."""
    hits = [runner.run(x.numpy()).argmax(1) == y.numpy()
            for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False)]
    return np.concatenate(hits) if hits else np.zeros(0, dtype=bool)


def predict_onnx(runner, dataset: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of an exported model (any runner with `.run(images)`) over a split."""
    hits = correct_onnx(runner, dataset, batch_size)
    return float(hits.mean()) if len(hits) else 0.0
