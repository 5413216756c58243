"""Run-folder checkpoints that cannot run code: tensors plus a JSON-able architecture spec.

A model is saved as {"format", "architecture", "state_dict"}: the architecture is the model's
class and, per layer, the sizes pruning changes (Conv2d in/out channels and groups, Linear
in/out features, BatchNorm features) as plain ints. Loading rebuilds it from a model of the same
architecture (`like`: the run's fresh student): copy it, give every layer the saved sizes and
every tensor the saved shape, then load the weights strictly. Everything is read with
`torch.load(weights_only=True)`, so a run folder copied from elsewhere is data, never code.

Torch-Pruning's own `tp.state_dict` is not used: it stores each module's `__dict__` (arbitrary
Python objects), which `weights_only=True` cannot read. Quantized (NNCF) models are not saved as
modules at all: the quantize stage's epoch checkpoint is the state dict of a model that
`quantize_with_nncf` rebuilds identically on resume, and its result ships as ONNX.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import torch
from torch import nn

from edgekd.errors import BadInputError

FORMAT = "edgekd-model/1"
SIZES = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm2d: ("num_features",),
    nn.BatchNorm1d: ("num_features",),
}


def _class_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def architecture(model: nn.Module) -> dict:
    """JSON-able: the model's class and the per-layer sizes that pruning changes."""
    layers = {}
    for name, module in model.named_modules():
        for kind, attrs in SIZES.items():
            if type(module) is kind:
                layers[name] = {attr: int(getattr(module, attr)) for attr in attrs}
    return {"class": _class_name(model), "layers": layers}


def model_payload(model: nn.Module) -> dict:
    return {"format": FORMAT, "architecture": architecture(model),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def restore(payload: object, like: nn.Module, source: str) -> nn.Module:
    """The model `payload` (from `model_payload`) describes, rebuilt from a copy of `like`."""
    from edgekd.models import load_state

    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BadInputError(f"{source}: not an edgekd {FORMAT} model checkpoint")
    saved_class = payload["architecture"]["class"]
    if saved_class != _class_name(like):
        raise BadInputError(f"{source}: holds a {saved_class}, the run's student is a {_class_name(like)}")
    model = copy.deepcopy(like).cpu()
    modules = dict(model.named_modules())
    for name, sizes in payload["architecture"]["layers"].items():
        if name not in modules:
            raise BadInputError(f"{source}: layer '{name}' is not in the student")
        for attr, value in sizes.items():
            setattr(modules[name], attr, value)
    state = payload["state_dict"]
    for key, tensor in state.items():
        owner, _, attr = key.rpartition(".")
        module = modules.get(owner)
        if module is None or not isinstance(tensor, torch.Tensor):
            continue  # load_state names the mismatch
        if attr in module._parameters and module._parameters[attr] is not None:
            old = module._parameters[attr]
            module._parameters[attr] = nn.Parameter(torch.empty_like(tensor, dtype=old.dtype),
                                                    requires_grad=old.requires_grad)
        elif attr in module._buffers and module._buffers[attr] is not None:
            module._buffers[attr] = torch.empty_like(tensor)
    return load_state(model, state, source)


def load(path: Path) -> dict:
    """A checkpoint's payload, read with weights_only=True; a pickled module is refused in one line."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BadInputError(f"{path}: written by an older edgekd as a pickled module, which would run code when "
                            "loaded; refused. Start a new run folder (its report and ONNX files stay readable)") from None
    except Exception as err:  # a truncated or foreign file
        raise BadInputError(f"{path}: not a readable edgekd checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict):
        raise BadInputError(f"{path}: not an edgekd checkpoint (a {type(payload).__name__})")
    return payload


def save_model(model: nn.Module, path: Path, **extra) -> None:
    """`model` as tensors plus its architecture spec, with `extra` (JSON-able or tensors) beside it."""
    from edgekd.runfolder import atomic_torch_save

    atomic_torch_save({**model_payload(model), **extra}, path)


def load_model(path: Path, like: nn.Module) -> nn.Module:
    return restore(load(path), like, str(path))


def refuse_unsafe(run_dir: Path) -> None:
    """Read every checkpoint of a run folder with weights_only=True before resuming it: one that
    an older edgekd pickled is refused before any work starts."""
    for path in sorted(Path(run_dir).glob("checkpoints/*.pt")) + sorted(Path(run_dir).glob("progress/*.pt")):
        load(path)


def load_stage_model(run_dir: Path, stage: str) -> nn.Module:
    """checkpoints/<stage>.pt of a finished run folder, rebuilt on the run's student architecture
    (config.json's profile, report.json's dataset): for benchmarks and tools reading a run."""
    import json

    from edgekd.models import create_model

    run_dir = Path(run_dir)
    try:
        student = json.loads((run_dir / "config.json").read_text())["profile"]["student"]
        dataset = json.loads((run_dir / "report.json").read_text())["dataset"]
    except (OSError, ValueError, KeyError) as err:
        raise BadInputError(f"{run_dir}: not a finished edgekd run folder ({type(err).__name__}: {err})") from None
    like = create_model(student["arch"], len(dataset["classes"]), tuple(dataset["input_shape"]), student["width"])
    return load_model(run_dir / "checkpoints" / f"{stage}.pt", like)
