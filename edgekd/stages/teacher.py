"""Stage 0: the teacher. Loaded from the user's file, or trained once on the data and cached. A
user's pretrained teacher whose head is new (weights for other classes) is fine-tuned once on the
training split (edgekd.stages.transfer) and cached the same way.

The cache key is the teacher recipe plus a fingerprint of the data's content (every image's
relative name, size, modification time and label; the idx files' hashes for the built-in data),
so a second run of the same recipe on the same data skips training, while changed data or a
changed recipe trains a new teacher beside the old one. Each entry is stored with its SHA-256 and
verified when loaded: a corrupt entry is refused in one line that says how to clear it.

A teacher from the user's file is checked against the data when it is loaded: one forward pass
of real images must give one logit per class.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgekd import distributed
from edgekd.config import Profile, fingerprint
from edgekd.data import DataBundle, Preprocess, augmentations
from edgekd.errors import BadInputError, EnvironmentProblem
from edgekd.training.losses import CrossEntropyObjective
from edgekd.models import ExportedTeacher, ModelSpec, checkpoint_payload, load_teacher, open_teacher
from edgekd.runfolder import atomic_write_bytes, atomic_write_text, sha256
from edgekd.progress import info
from edgekd.training.loop import TrainPlan, fit


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGEKD_CACHE_DIR", Path.home() / ".cache" / "edgekd"))


@dataclass
class TeacherSource:
    """Where the teacher comes from: a file or name given by the user, or None (train the built-in)."""

    path_or_name: str | None = None
    arch: str | None = None  # for a bare state dict
    weights: str | None = None  # for a named architecture
    trust_torchscript: bool = False  # TorchScript is code: loaded only when the user says so, never saved


@dataclass
class Teacher:
    model: nn.Module
    spec: ModelSpec | None
    origin: str  # "trained", "cache:<path>", or the user's file
    fingerprint: str
    details: dict


def obtain_teacher(source: TeacherSource, profile: Profile, data: DataBundle, cache_dir: Path) -> Teacher:
    if source.path_or_name is not None:
        return _users_teacher(source, profile, data, cache_dir)
    cfg = profile.teacher
    augment = augmentations(profile.data, data)
    cached = cache_entry(profile, data, cache_dir)
    key = cached.stem.removeprefix(f"{cfg.arch}-")
    spec = ModelSpec(cfg.arch, data.num_classes, data.input_shape, cfg.width)
    if cached.is_file():
        model, spec = _load_cached(cached, data, "teacher: cached ")
        return Teacher(model, spec, f"cache:{cached}", key, {"cached": True})
    info(f"teacher: training {cfg.arch} for {cfg.epochs} epochs ", user_text=f"(cached afterwards in {cached.parent})")
    torch.manual_seed(profile.seed)  # the initial weights too: the same recipe and seed give the same teacher
    model = spec.build()
    plan = TrainPlan(
        epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=profile.data.batch_size,
        seed=profile.seed, augment=augment, fast_math=profile.mixed_precision, workers=profile.data.workers,
        min_steps=cfg.min_steps, compile=cfg.compile,
    )
    progress = cache_dir / "teachers" / f".{cfg.arch}-{key}.progress.pt"
    log = fit(model, CrossEntropyObjective(), data.train, plan, label="teacher", checkpoint=progress, fingerprint=key)
    _store(cached, model, spec, progress)
    return Teacher(model.eval(), spec, "trained", key, {"cached": False, "epoch_losses": log.epoch_losses})


def _users_teacher(source: TeacherSource, profile: Profile, data: DataBundle, cache_dir: Path) -> Teacher:
    """The user's teacher; one whose weights came with a classifier for other classes is fine-tuned
    on the training split first (edgekd.stages.transfer), once: the result is cached like the built-in."""
    torch.manual_seed(profile.seed)  # a new head's initial weights: the same command and seed, the same teacher
    model, spec, adapted = open_teacher(source.path_or_name, data.num_classes, data.input_shape, source.arch,
                                        source.weights, source.trust_torchscript)
    check_teacher(model, spec, data, source.path_or_name)
    file = Path(source.path_or_name)
    weights = Path(source.weights) if source.weights is not None else file
    identity = {"file": str(file.resolve()), "size": file.stat().st_size, "mtime": file.stat().st_mtime} \
        if file.is_file() else {"name": source.path_or_name, "weights": source.weights}
    key = fingerprint(identity, data_fingerprint(data))
    details = {} if adapted is None else {"weights": adapted.as_dict()}
    if adapted is None or not adapted.new_head:
        return Teacher(model.eval(), spec, source.path_or_name, key, details)
    from edgekd.stages.transfer import fine_tune

    key = fingerprint(key, _cached_sha256(weights), profile.transfer.model_dump(mode="json"), profile.seed,
                      augmentations(profile.data, data), data.input_shape, *profile.arithmetic)
    cached = cache_dir / "teachers" / f"finetuned-{spec.arch.replace(':', '-')}-{key}.pt"
    if cached.is_file():
        model, spec = _load_cached(cached, data, "teacher: fine-tuned and cached ")
        payload = json.loads(_record_file(cached).read_text()) if _record_file(cached).is_file() else {}
        return Teacher(model, spec, f"cache:{cached}", key, {**details, "cached": True, "fine_tuned": payload})
    progress = cache_dir / "teachers" / f".finetuned-{key}.progress.pt"
    record = fine_tune(model, data, profile, checkpoint=progress, fingerprint=key)
    if distributed.is_main():
        atomic_write_text(_record_file(cached), json.dumps(record.as_dict()) + "\n")
    _store(cached, model, spec, progress)
    return Teacher(model.eval(), spec, source.path_or_name, key, {**details, "cached": False, "fine_tuned": record.as_dict()})


def _load_cached(cached: Path, data: DataBundle, says: str) -> tuple[nn.Module, ModelSpec]:
    verify_cache_entry(cached)
    model, spec = load_teacher(str(cached), data.num_classes, data.input_shape)
    info(says, user_text=str(cached))
    return model.eval(), spec


def _record_file(entry: Path) -> Path:
    return entry.with_name(entry.name + ".json")


def _store(cached: Path, model: nn.Module, spec: ModelSpec, progress: Path) -> None:
    if distributed.is_main():
        # the checksum first, then the entry: a kill between them leaves no entry (it retrains), never
        # a valid entry without its checksum (refused as corrupt)
        buffer = io.BytesIO()
        torch.save(checkpoint_payload(model, spec), buffer)
        atomic_write_text(_checksum_file(cached), hashlib.sha256(buffer.getvalue()).hexdigest() + "\n")
        atomic_write_bytes(cached, buffer.getvalue())
        progress.unlink(missing_ok=True)
    distributed.barrier()


# ---------------------------------------------------------------- the cache's integrity


def cache_entry(profile: Profile, data: DataBundle, cache_dir: Path) -> Path:
    """Where the built-in teacher for this recipe and this data's content is cached."""
    recipe = profile.teacher.model_dump(mode="json", exclude={"compile"})  # how fast it trains, not what it learns
    key = fingerprint(recipe, data_fingerprint(data), data.input_shape, profile.seed,
                      augmentations(profile.data, data), *profile.arithmetic)
    return cache_dir / "teachers" / f"{profile.teacher.arch}-{key}.pt"


def _checksum_file(entry: Path) -> Path:
    return entry.with_name(entry.name + ".sha256")


def verify_cache_entry(entry: Path) -> None:
    """The entry's SHA-256 must match the one written beside it when it was cached."""
    checksum = _checksum_file(entry)
    expected = checksum.read_text().strip() if checksum.is_file() else None
    if expected != sha256(entry):
        why = "no checksum beside it" if expected is None else "checksum mismatch"
        raise EnvironmentProblem(f"teacher cache entry {entry} is corrupt ({why}); delete it to retrain: "
                                 f"rm {entry} {checksum}")


def data_fingerprint(data: DataBundle) -> str:
    """A cheap fingerprint of the data's content: per image its relative name, size, mtime and
    label (ImageFolder); the files' hashes for the built-in idx data; and which images each split holds."""
    splits = {"train": data.train, "test": data.test}
    if getattr(data, "val", None) is not None:
        splits["val"] = data.val
    # the default preprocessing is left out, so teachers cached before it could be set stay valid
    preprocess = {} if data.preprocess in ({}, Preprocess().as_dict()) else {"preprocess": data.preprocess}
    return fingerprint(data.name, data.classes, list(data.input_shape),
                       {name: _content(split, data.name) for name, split in splits.items()}, *preprocess.values())


def _content(dataset, name: str) -> object:
    from torch.utils.data import Subset, TensorDataset

    if isinstance(dataset, Subset):
        indices = hashlib.sha256(json.dumps([int(i) for i in dataset.indices]).encode()).hexdigest()
        return {"subset": indices, "of": _content(dataset.dataset, name)}
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        paths = [Path(p) for p, _ in samples]
        root = Path(os.path.commonpath(paths)) if paths else Path()
        digest = hashlib.sha256()
        for path, label in samples:
            stat = Path(path).stat()
            digest.update(os.fsencode(Path(path).relative_to(root)) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
        return {"files": len(samples), "digest": digest.hexdigest()}
    if isinstance(dataset, TensorDataset) and name == "fashion-mnist":
        from edgekd.data import FASHION_MNIST_DIR

        files = sorted(p for p in FASHION_MNIST_DIR.iterdir() if "-ubyte" in p.name)
        return {"idx": {p.name: _cached_sha256(p) for p in files}, "size": len(dataset)}
    if isinstance(dataset, TensorDataset):
        digest = hashlib.sha256()
        for tensor in dataset.tensors:
            digest.update(tensor.contiguous().numpy().tobytes())
        return {"tensors": digest.hexdigest()}
    raise EdgekdBug(f"no content fingerprint for a {type(dataset).__name__}")


_HASHES: dict[tuple, str] = {}


def _cached_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256(path)
    return _HASHES[key]


class EdgekdBug(RuntimeError):
    """A data set type this module does not know: a bug in edgekd, so a traceback."""


# ---------------------------------------------------------------- a user's teacher against the data


@torch.no_grad()
def check_teacher(model: nn.Module, spec: ModelSpec | None, data: DataBundle, source: str) -> None:
    """One forward pass of real images: the teacher must take them and give one logit per class."""
    shape = tuple(data.input_shape)
    if spec is not None and tuple(spec.input_shape) != shape:
        raise BadInputError(f"teacher {source} was built for {_shape(spec.input_shape)} images, the data is "
                            f"{_shape(shape)} (set --image-size, or use a teacher made for this data)")
    fixed = getattr(model, "input_shape", None) if isinstance(model, ExportedTeacher) else None
    if fixed is not None and any(f is not None and f != d for f, d in zip(fixed, shape)):
        raise BadInputError(f"teacher {source} was exported for {_shape(fixed)} images, the data is {_shape(shape)}")
    images = torch.stack([data.train[i][0] for i in range(min(4, len(data.train)))])
    was_training = model.training
    model.eval()
    try:
        logits = model(images)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise BadInputError(f"teacher {source} does not take the data's images (a batch of "
                            f"{tuple(images.shape)}): {type(err).__name__}: {first}") from None
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        what = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise BadInputError(f"teacher {source} returns {what} for a batch of {len(images)}; "
                            f"a classifier returns (batch, classes)")
    if logits.shape[1] != data.num_classes:
        raise BadInputError(f"teacher {source} has {logits.shape[1]} outputs, the data has {data.num_classes} classes")
    if not torch.isfinite(logits).all():
        raise BadInputError(f"teacher {source} returns NaN or infinite logits on the data's images")


def _shape(shape) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def teacher_counts(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one image. Forward hooks count an ordinary module; a TorchScript or
    torch.export teacher has none to hook, so its MACs come from its ONNX export."""
    import tempfile

    from edgekd.metrics import count
    from edgekd.export.onnx_file import export_onnx

    if not isinstance(model, (torch.jit.ScriptModule, ExportedTeacher)):
        return count(model, example)
    with tempfile.TemporaryDirectory(prefix="edgekd-teacher-") as folder:
        path = export_onnx(model, example[:1], Path(folder) / "teacher.onnx")
        return onnx_macs(path), sum(p.numel() for p in model.parameters())


def onnx_macs(path: Path) -> int:
    """Multiply-accumulates of Conv, Gemm and MatMul nodes for one image, from shape inference."""
    import numpy as np
    import onnx

    model = onnx.load(str(path))
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {init.name: tuple(init.dims) for init in inferred.graph.initializer}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    macs = 0
    for node in inferred.graph.node:
        out = shapes.get(node.output[0])
        if out is None:
            continue
        if node.op_type == "Conv" and node.input[1] in shapes:
            macs += int(np.prod(out)) * int(np.prod(shapes[node.input[1]][1:]))
        elif node.op_type in ("Gemm", "MatMul") and node.input[0] in shapes:
            macs += int(np.prod(out)) * shapes[node.input[0]][-1]
    return macs
