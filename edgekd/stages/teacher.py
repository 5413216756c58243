"""Stage 0: the teacher. Loaded from the user's file, or trained once on the data and cached.

The cache key is the teacher recipe plus the data's identity, so a second run of the same
recipe skips training, and a changed recipe trains a new teacher beside the old one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgekd import distributed
from edgekd.config import Profile, fingerprint
from edgekd.data import DataBundle, augmentations
from edgekd.losses import CrossEntropyObjective
from edgekd.models import ModelSpec, load_teacher, save_checkpoint
from edgekd.progress import info
from edgekd.train import TrainPlan, fit


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGEKD_CACHE_DIR", Path.home() / ".cache" / "edgekd"))


@dataclass
class TeacherSource:
    """Where the teacher comes from: a file or name given by the user, or None (train the built-in)."""

    path_or_name: str | None = None
    arch: str | None = None  # for a bare state dict
    weights: str | None = None  # for a named architecture


@dataclass
class Teacher:
    model: nn.Module
    spec: ModelSpec | None
    origin: str  # "trained", "cache:<path>", or the user's file
    fingerprint: str
    details: dict


def obtain_teacher(source: TeacherSource, profile: Profile, data: DataBundle, cache_dir: Path) -> Teacher:
    if source.path_or_name is not None:
        model, spec = load_teacher(source.path_or_name, data.num_classes, data.input_shape, source.arch, source.weights)
        file = Path(source.path_or_name)
        identity = {"file": str(file.resolve()), "size": file.stat().st_size, "mtime": file.stat().st_mtime} \
            if file.is_file() else {"name": source.path_or_name, "weights": source.weights}
        return Teacher(model.eval(), spec, source.path_or_name, fingerprint(identity, data.name), {})
    cfg = profile.teacher
    augment = augmentations(profile.data, data)
    key = fingerprint(cfg, data.name, len(data.train), len(data.test), data.input_shape, profile.seed, augment)
    cached = cache_dir / "teachers" / f"{cfg.arch}-{key}.pt"
    spec = ModelSpec(cfg.arch, data.num_classes, data.input_shape, cfg.width)
    if cached.is_file():
        model, spec = load_teacher(str(cached), data.num_classes, data.input_shape)
        info(f"teacher: cached {cached}")
        return Teacher(model.eval(), spec, f"cache:{cached}", key, {"cached": True})
    info(f"teacher: training {cfg.arch} for {cfg.epochs} epochs (cached afterwards in {cached.parent})")
    torch.manual_seed(profile.seed)  # the initial weights too: the same recipe and seed give the same teacher
    model = spec.build()
    plan = TrainPlan(
        epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=profile.data.batch_size,
        seed=profile.seed, augment=augment, fast_math=True, workers=profile.data.workers, min_steps=cfg.min_steps,
    )
    progress = cache_dir / "teachers" / f".{cfg.arch}-{key}.progress.pt"
    log = fit(model, CrossEntropyObjective(), data.train, plan, label="teacher", checkpoint=progress, fingerprint=key)
    if distributed.is_main():
        save_checkpoint(model, spec, cached)
        progress.unlink(missing_ok=True)
    distributed.barrier()
    return Teacher(model.eval(), spec, "trained", key, {"cached": False, "epoch_losses": log.epoch_losses})
