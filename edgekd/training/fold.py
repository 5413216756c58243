"""Fold every BatchNorm into the convolution before it, on the plain nn.Module.

Quantizing with BatchNorms left in place exports fine but ONNX Runtime then cannot fuse
Conv+BN+QDQ into QLinearConv, and INT8 runs slower than FP32. NNCF rejects `torch.fx`
GraphModules, so fx is used only to *find* conv->bn pairs; the module tree itself is edited.

Norm layers that carry their activation (timm's `BatchNormAct2d`, in every EfficientNet, MobileNet
and RegNet of timm's) are BatchNorms too: fx would trace through them into a functional
batch_norm and find no pair, so they are traced as leaves, folded, and replaced by what follows
the normalisation inside them (their dropout and activation). A Lite0 left unfolded had a QDQ
pair put between each convolution and its BatchNorm for ONNX Runtime: the INT8 file then agreed
with its fake-quantized model on 75% of images.
"""

from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


class _NormsAsLeaves(torch.fx.Tracer):
    """Traces BatchNorm subclasses from other libraries as modules, not into their code."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, nn.BatchNorm2d) or super().is_leaf_module(module, qualified_name)


def after_norm(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What a folded BatchNorm becomes: nothing, or the dropout and activation a norm-act layer
    applies after normalising; None for a subclass whose forward edgekd does not know."""
    if type(bn) in (nn.BatchNorm2d, nn.SyncBatchNorm):
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and isinstance(getattr(bn, "act", None), nn.Module):
        parts = [m for m in (getattr(bn, "drop", None), bn.act) if m is not None and not isinstance(m, nn.Identity)]
        return nn.Sequential(*parts) if len(parts) > 1 else parts[0] if parts else nn.Identity()
    return None


def _pairs_by_trace(model: nn.Module) -> list[tuple[str, str]]:
    graph = _NormsAsLeaves().trace(model)
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules.get(source.target), nn.Conv2d)
            and len(source.users) == 1
            and after_norm(modules[node.target]) is not None
        ):
            pairs.append((source.target, node.target))
    return pairs


def _pairs_in_sequences(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (a, first), (b, second) in zip(children, children[1:]):
                if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d) and after_norm(second) is not None:
                    prefix = f"{name}." if name else ""
                    pairs.append((prefix + a, prefix + b))
    return pairs


def _pairs(model: nn.Module) -> list[tuple[str, str]]:
    try:
        return _pairs_by_trace(model)
    except Exception:  # models with data-dependent control flow: fall back to Sequential pairs
        return _pairs_in_sequences(model)


def fold_scales(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per folded convolution, the factor gamma / sigma that folding multiplies each output
    channel's weights by (the model is not changed).

    Training the folded weights W' = s * W with SGD is not training the network it came from:
    the same gradient step is 1/s^2 times larger relative to W'. After pruning, s is often far
    below 1 (median 0.056 in one smoke student's second layer), and QAT then diverged at any
    learning rate that suits the BatchNorm network. `precondition_folded` undoes that."""
    scales = {}
    for conv_name, bn_name in _pairs(model):
        bn = model.get_submodule(bn_name)
        gamma = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
        scales[conv_name] = (gamma / torch.sqrt(bn.running_var + bn.eps)).detach().clone()
    return scales


def precondition_folded(model: nn.Module, scales: dict[str, torch.Tensor]):
    """An `after_backward` hook for `train.fit`: multiply each folded convolution's weight
    gradient by s^2 per output channel. SGD (momentum included, as it is linear) on the folded
    weights then takes exactly the steps it would take on the unfolded weights with the
    BatchNorm statistics frozen: the usual way to run QAT on a BatchNorm network, without
    keeping the BatchNorms. `model` is the folded one (or NNCF's wrapper of it: names kept)."""
    convs = [(model.get_submodule(name).weight, (s * s).reshape(-1, 1, 1, 1)) for name, s in scales.items()]

    def hook() -> None:
        for weight, factor in convs:
            if weight.grad is not None:
                weight.grad.mul_(factor.to(weight.grad.device))

    return hook


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of `model` in eval mode with each conv->bn pair fused; returns (model, pairs folded)."""
    model = copy.deepcopy(model).eval()
    pairs = _pairs(model)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        fused = fuse_conv_bn_eval(conv, bn)
        # torch leaves the folded bias frozen when the convolution had none; it is the BatchNorm's
        # shift, which training the BatchNorm network would update, so QAT trains it too
        fused.bias.requires_grad_(fused.weight.requires_grad)
        _set(model, conv_name, fused)
        _set(model, bn_name, after_norm(bn))
    return model, len(pairs)
