"""torchrun support: one process per device, DDP for every training stage.

Under `torchrun` (RANK and WORLD_SIZE set) the process group starts with NCCL on GPUs and
Gloo on CPUs; without it everything here is a no-op and edgekd runs as a single process.
Only rank 0 writes files; the others wait for it where they need its output.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta

import torch
import torch.distributed as dist

from edgekd.errors import BadInputError

_device = torch.device("cpu")  # this process's training device, chosen once by `init_from_env`


def resolve_device(spec: str) -> torch.device:
    """`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`; under torchrun a bare `cuda`
    (or `auto`) means this process's LOCAL_RANK. A device that is not here is a one-line error."""
    spec = spec.strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec):
        raise BadInputError(f"--device '{spec}': expected auto, cpu, cuda or cuda:N")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BadInputError(f"--device {spec}: no CUDA device is visible here (use --device cpu or auto)")
    index = int(spec.split(":")[1]) if ":" in spec else int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise BadInputError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def init_from_env(device_spec: str = "auto") -> torch.device:
    """Choose this process's device; under torchrun start the process group (NCCL on GPUs,
    Gloo on CPUs)."""
    global _device
    _device = resolve_device(device_spec)
    if _device.type == "cuda":
        torch.cuda.set_device(_device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if _device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=60))
    return _device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast(value):
    """Rank 0's value on every rank (any picklable object)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_across_ranks(value: float) -> float:
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world_size()


def device() -> torch.device:
    """Where training runs in this process (`--device`; the CPU until `init_from_env` chose)."""
    return _device
