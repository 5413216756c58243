"""The stage contract: a model, a config and the data in; a model and a stage record out.

Order (the pipeline enforces it): teacher -> distill -> prune -> quantize -> export.
Pruning after quantization is not allowed: the INT8 graph's channels are fixed by its scales.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from edgekd.config import Profile, Target
from edgekd.data import DataBundle
from edgekd.runfolder import RunFolder
from edgekd.training.teacher_logits import TeacherLogits


@dataclass
class StageContext:
    """What a stage may read. Stages write only under `run`, and only through `progress`/`path`."""

    profile: Profile
    target: Target
    data: DataBundle
    teacher: nn.Module
    run: RunFolder
    example: torch.Tensor  # a batch of real validation images, for tracing and parity checks
    fingerprint: str = ""  # of this stage's inputs and config; epoch checkpoints carry it
    # the lowest validation top-1 (0..1) the student may have: the teacher's minus the accuracy
    # budget. Stages that can trade accuracy (pruning, QAT) respect it; None: no budget known
    accuracy_floor: float | None = None
    # the teacher's logits on the training split, computed once and shared by every distilling
    # stage where the augmentation has few enough views (edgekd.training.teacher_logits); None: always online
    teacher_logits: "TeacherLogits | None" = None
    # where the student started when not from scratch: its pretrained weights (Adapted.as_dict())
    student_start: dict | None = None

    def progress(self, stage: str) -> Path:
        """The epoch checkpoint a training stage resumes from."""
        return self.run.path(f"progress/{stage}.pt")


@dataclass
class StageOutput:
    """What a stage returns. The pipeline exports `model` (FP32 or QDQ INT8, by `precision`),
    checks the export against it, and measures accuracy on the exported file."""

    model: nn.Module
    details: dict = field(default_factory=dict)  # stage-specific facts for the report
    precision: str = "fp32"  # "fp32", or "int8" for a model of native quantize/dequantize ops


class Stage(Protocol):
    name: str

    def enabled(self, profile: Profile) -> bool: ...

    def config(self, profile: Profile, target: Target) -> object:
        """What the stage's result depends on, besides its input model (for the fingerprint)."""

    def run(self, model: nn.Module, ctx: StageContext) -> StageOutput: ...
