"""The frozen teacher's logits, computed once per training image and view, looked up every epoch.

A distilling stage runs the frozen teacher on every batch of every epoch; for the default pair on
two CPU cores that forward pass is ~40% of a distillation step (25 ms of ~60 ms a batch of 256).
When the augmentation has a finite set of views (none: one view; a horizontal flip: two), every
(image, view) has one teacher output, so it is computed once and reused by distillation, every
pruning recovery and QAT: the same numbers the online teacher gives, without its cost. Shen & Xing
("A Fast Knowledge Distillation Framework for Visual Recognition", ECCV 2022) store the teacher's
soft labels of random crops the same way. Random shifts have too many views to store: with them
(and with a hint term, which needs the teacher's features) the teacher runs online as before.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

MAX_BYTES = 512 << 20  # logits kept in memory, all views together; beyond it the teacher runs online

# views that are a fixed function of the image, by name; a view number is a mixed-radix code of them
FINITE_VIEWS = {"hflip": 2}


def view_count(augment: tuple[str, ...]) -> int | None:
    """How many distinct views of an image `augment` makes, or None when they are too many to list."""
    count = 1
    for name in augment:
        if name not in FINITE_VIEWS:
            return None
        count *= FINITE_VIEWS[name]
    return count


def apply_view(x: torch.Tensor, view: int, augment: tuple[str, ...]) -> torch.Tensor:
    """Batch `x` as view number `view` sees it (the inverse of how `train.augment` numbers views)."""
    for name in reversed(augment):
        radix = FINITE_VIEWS[name]
        if name == "hflip" and view % radix == 1:
            x = x.flip(-1)
        view //= radix
    return x


class IndexedDataset(Dataset):
    """A split whose items also say their index, so a batch can look its teacher logits up."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        return x, y, index


class TeacherLogits:
    """Lazily filled table of the teacher's logits: (image index, view) -> logits, for one split."""

    def __init__(self, teacher: nn.Module, dataset: Dataset, num_classes: int, max_bytes: int = MAX_BYTES):
        self.teacher = teacher
        self.dataset = dataset
        self.num_classes = num_classes
        self.max_bytes = max_bytes
        self._table: torch.Tensor | None = None  # (N, views, classes), float32, on the CPU
        self._augment: tuple[str, ...] | None = None
        self._dtype: torch.dtype | None = None
        self.seconds = 0.0  # spent computing, for the stage records

    def serves(self, dataset: Dataset, augment: tuple[str, ...]) -> bool:
        """Whether this table can stand in for the teacher on `dataset` under `augment`."""
        views = view_count(augment)
        return (dataset is self.dataset and views is not None
                and len(dataset) * views * self.num_classes * 4 <= self.max_bytes)

    def prepare(self, augment: tuple[str, ...], device: torch.device, dtype: torch.dtype | None) -> None:
        """Compute every view's logits, once: a later stage with the same views reuses them. A
        stage with fewer views (no flip) reads view 0 of a flip table: the unflipped image."""
        if self._table is not None and (self._augment == augment or augment == ()):
            return  # view 0 of any table is the image as it is
        import time

        started = time.perf_counter()
        views = view_count(augment)
        table = torch.empty(len(self.dataset), views, self.num_classes)
        self.teacher.eval()
        parameter = next(iter(self.teacher.parameters()), None)
        teacher_device = parameter.device if parameter is not None else torch.device("cpu")
        self.teacher.to(device)
        start = 0
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for x, _ in DataLoader(self.dataset, batch_size=512, shuffle=False):
                x = x.to(device)
                if dtype is not None:
                    x = x.contiguous(memory_format=torch.channels_last)
                for view in range(views):
                    table[start:start + len(x), view] = self.teacher(apply_view(x, view, augment)).float().cpu()
                start += len(x)
        self.teacher.to(teacher_device)
        self._table, self._augment, self._dtype = table, augment, dtype
        self.seconds += time.perf_counter() - started

    def lookup(self, index: torch.Tensor, view: torch.Tensor, device: torch.device) -> torch.Tensor:
        return self._table[index.cpu(), view.cpu()].to(device, non_blocking=True)
