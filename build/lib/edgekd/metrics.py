"""What a model costs, independent of where it runs: multiply-accumulates and parameters."""

from __future__ import annotations

import torch
from torch import nn


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one image through `model`."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example[:1])
    model.train(was_training)
    return int(macs), int(params)
