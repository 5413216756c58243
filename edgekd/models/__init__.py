"""Architectures by name, and teachers from checkpoints.

edgekd's own small-input models live in one registry (`edgekd_*` names):
`create_model("edgekd_cnn", num_classes=10, input_shape=(1, 28, 28), width=0.5)`. Any other name
is the field's model zoo, built exactly as its library builds it: `resnet18` is torchvision's
ResNet-18, `timm:efficientnet_lite0` (or a bare timm name torchvision lacks) timm's. A bare name is
torchvision's where torchvision has it, else timm's; `torchvision:` / `timm:` say which. An unknown
name is an error listing edgekd's. Checkpoints written by edgekd carry their architecture, so
`--teacher runs/.../teacher.pt` needs nothing else. Pretrained weights from other ports, or for
other classes, are fitted in `edgekd.models.weights`.
"""

from __future__ import annotations

import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgekd.errors import BadInputError
from edgekd.models.weights import Adapted, fit_pretrained, load_state  # noqa: F401  (load_state: edgekd.models' API)

Builder = Callable[[int, tuple[int, int, int], float], nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register(name: str):
    def add(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"architecture '{name}' registered twice")
        _REGISTRY[name] = builder
        return builder

    return add


# names edgekd used for its small-input variants before the zoo took the plain names: only an
# edgekd checkpoint's stored spec can still say them (ModelSpec.from_payload)
RENAMED = {"resnet18": "edgekd_resnet18", "mobilenet_v3_small": "edgekd_mobilenet_v3_small"}


def known_architectures() -> list[str]:
    return sorted(_REGISTRY)


def canonical_arch(arch: str) -> str:
    """edgekd's name, or the zoo model as `torchvision:NAME` / `timm:NAME`; BadInputError if none has it."""
    if arch in _REGISTRY:
        return arch
    library, _, name = arch.partition(":") if ":" in arch else ("", "", arch)
    if library in ("", "torchvision") and name in _torchvision_names():
        return f"torchvision:{name}"
    if library in ("", "timm"):
        timm = _timm(required=library == "timm")
        if timm is not None and name in timm.list_models():
            return f"timm:{name}"
    hint = " (pip install timm for timm's models)" if library in ("", "timm") and _timm(required=False) is None else ""
    raise BadInputError(f"unknown architecture '{arch}'; known: edgekd's {', '.join(known_architectures())}, "
                        f"or any torchvision or timm classifier by name{hint}")


def require_architecture(arch: str) -> None:
    canonical_arch(arch)


def _torchvision_names() -> set[str]:
    import torchvision

    return set(torchvision.models.list_models(module=torchvision.models))


def _timm(required: bool):
    try:
        import timm
    except ImportError:
        if required:
            raise BadInputError("timm models need timm: pip install timm") from None
        return None
    return timm


def create_model(arch: str, num_classes: int, input_shape: tuple[int, int, int], width: float = 1.0) -> nn.Module:
    canonical = canonical_arch(arch)
    if canonical in _REGISTRY:
        return _REGISTRY[canonical](num_classes, tuple(input_shape), width)
    if width != 1.0:
        raise BadInputError(f"{arch}: --width applies to edgekd's own models only; a zoo model is built as its "
                            f"library builds it (choose a smaller variant by name instead)")
    library, name = canonical.split(":", 1)
    channels = input_shape[0]
    if library == "timm":
        return _timm(required=True).create_model(name, pretrained=False, num_classes=num_classes, in_chans=channels)
    if channels != 3:
        raise BadInputError(f"torchvision's {name} takes RGB images (3 channels); the data has {channels}: "
                            f"use an edgekd_ or timm model (timm takes any channel count), or RGB images")
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _ch(base: int, width: float) -> int:
    return max(4, int(round(base * width / 4)) * 4)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Classifier(nn.Module):
    """features -> global average pool -> linear; `features` is what hint distillation taps."""

    def __init__(self, features: nn.Sequential, channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


@register("edgekd_resnet")
def edgekd_resnet(num_classes: int, input_shape: tuple[int, int, int], width: float = 1.0) -> nn.Module:
    """A 5-conv residual network with a pooled classifier, ~13M MACs at 28x28 (width 1): the smoke
    profile's teacher (the default's until edgekd_resnet_fc)."""
    c1, c2, c3 = _ch(24, width), _ch(48, width), _ch(96, width)
    features = nn.Sequential(
        conv_bn_relu(input_shape[0], c1), ResidualBlock(c1, c2, 2), ResidualBlock(c2, c3, 2)
    )
    return Classifier(features, c3, num_classes, dropout=0.2)


@register("edgekd_resnet_fc")
def edgekd_resnet_fc(num_classes: int, input_shape: tuple[int, int, int], width: float = 1.0) -> nn.Module:
    """The built-in teacher: edgekd_resnet's five convolutions and a grid classifier, ~13.6M MACs
    at 28x28 (width 1). On Fashion-MNIST (10 epochs, same recipe) it reached 93.64% test top-1
    where the pooled edgekd_resnet reached 92.34%."""
    c1, c2, c3 = _ch(24, width), _ch(48, width), _ch(96, width)
    features = nn.Sequential(
        conv_bn_relu(input_shape[0], c1), ResidualBlock(c1, c2, 2), ResidualBlock(c2, c3, 2)
    )
    return GridClassifier(features, input_shape, _ch(128, width), num_classes, dropout=0.2)


@register("edgekd_cnn")
def edgekd_cnn(num_classes: int, input_shape: tuple[int, int, int], width: float = 1.0) -> nn.Module:
    """Four plain 3x3 convolutions and a pooled classifier, ~3.8M MACs at 28x28 (width 1): the smoke
    profile's student (the default's until edgekd_cnn_fc)."""
    c1, c2, c3 = _ch(16, width), _ch(32, width), _ch(64, width)
    features = nn.Sequential(
        conv_bn_relu(input_shape[0], c1), conv_bn_relu(c1, c2, 2), conv_bn_relu(c2, c3, 2), conv_bn_relu(c3, c3)
    )
    return Classifier(features, c3, num_classes)


class GridClassifier(nn.Module):
    """features -> the map pooled to a grid of about 8x8 or less -> flatten -> hidden linear -> linear.

    Global average pooling keeps what a feature map holds, not where: on small, centred images
    (Fashion-MNIST, digits, icons) where matters, and a linear layer over the flattened 7x7 map
    buys that for few MACs. At 1.6M MACs this head distilled to 92.2% validation top-1 on
    Fashion-MNIST where a pooled 4-conv student of 1.4M reached 91.6% (8 epochs, same teacher)."""

    def __init__(self, features: nn.Sequential, input_shape: tuple[int, int, int], hidden: int, num_classes: int,
                 dropout: float = 0.0):
        super().__init__()
        self.features = features
        with torch.no_grad():
            side = features(torch.zeros(1, *input_shape)).shape[-1]
        factor = max(1, side // 8)  # 7 -> 7, 8 -> 8, 16 -> 8, 56 -> 8: a bounded head on large images
        self.pool = nn.AvgPool2d(factor) if factor > 1 else nn.Identity()
        with torch.no_grad():
            flat = self.pool(features(torch.zeros(1, *input_shape))).numel()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, hidden), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.classifier(self.hidden(self.pool(self.features(x))))


@register("edgekd_cnn_fc")
def edgekd_cnn_fc(num_classes: int, input_shape: tuple[int, int, int], width: float = 1.0) -> nn.Module:
    """The built-in student: three plain 3x3 convolutions and a grid classifier, ~1.6M MACs at
    28x28 (width 1)."""
    c1, c2 = _ch(16, width), _ch(32, width)
    features = nn.Sequential(conv_bn_relu(input_shape[0], c1), conv_bn_relu(c1, c2, 2), conv_bn_relu(c2, c2, 2))
    return GridClassifier(features, input_shape, _ch(64, width), num_classes)


def _small_input(input_shape: tuple[int, int, int]) -> bool:
    return max(input_shape[1:]) <= 64


@register("edgekd_mobilenet_v3_small")
def edgekd_mobilenet_v3_small(num_classes: int, input_shape: tuple[int, int, int], width: float = 1.0) -> nn.Module:
    """torchvision's MobileNetV3-Small at `width`, for any channel count; on small inputs the stem
    keeps full resolution."""
    from torchvision.models import mobilenet_v3_small as build

    model = build(weights=None, num_classes=num_classes, width_mult=width)
    stem = model.features[0][0]
    stride = 1 if _small_input(input_shape) else 2
    model.features[0][0] = nn.Conv2d(input_shape[0], stem.out_channels, 3, stride, 1, bias=False)
    return model


@register("edgekd_resnet18")
def edgekd_resnet18(num_classes: int, input_shape: tuple[int, int, int], width: float = 1.0) -> nn.Module:
    """torchvision's ResNet-18 blocks at `width` x (64, 128, 256, 512) channels, for any channel
    count; on small inputs a 3x3 stem without max-pool (torchvision's own is `resnet18`)."""
    from torchvision.models import resnet18 as build
    from torchvision.models.resnet import BasicBlock

    if width == 1.0:
        model = build(weights=None, num_classes=num_classes)
    else:
        model = build(weights=None, num_classes=num_classes)
        widths = [_ch(c, width) for c in (64, 128, 256, 512)]
        cin = widths[0]
        for index, cout in enumerate(widths):
            blocks = []
            for b in range(2):
                stride = 2 if (b == 0 and index > 0) else 1
                down = None
                if stride != 1 or cin != cout:
                    down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                blocks.append(BasicBlock(cin, cout, stride, down))
                cin = cout
            setattr(model, f"layer{index + 1}", nn.Sequential(*blocks))
        model.bn1 = nn.BatchNorm2d(widths[0])
        model.fc = nn.Linear(widths[-1], num_classes)
    stem = model.bn1.num_features
    if _small_input(input_shape):
        model.conv1 = nn.Conv2d(input_shape[0], stem, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(input_shape[0], stem, 7, 2, 3, bias=False)
    return model


# ---------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a registered model: stored beside its weights in every edgekd checkpoint."""

    arch: str
    num_classes: int
    input_shape: tuple[int, int, int]
    width: float = 1.0

    def build(self) -> nn.Module:
        return create_model(self.arch, self.num_classes, self.input_shape, self.width)

    @classmethod
    def from_payload(cls, spec: dict) -> "ModelSpec":
        """The spec an edgekd checkpoint stored; a bare zoo name there is an edgekd variant's old name."""
        arch = RENAMED.get(spec["arch"], spec["arch"])
        return cls(**{**spec, "arch": arch, "input_shape": tuple(spec["input_shape"])})


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise BadInputError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None


def load_teacher(
    source: str, num_classes: int, input_shape: tuple[int, int, int], arch: str | None = None, weights: str | None = None,
    trust_torchscript: bool = False,
) -> tuple[nn.Module, ModelSpec | None]:
    """A teacher from a file (edgekd checkpoint, state dict + arch, TorchScript, torch.export)
    or from a registered / torchvision name with a weights file. No format but TorchScript (and
    only with `trust_torchscript`) can run code while it is read (edgekd/models/teacher_files.py)."""
    model, spec, _ = open_teacher(source, num_classes, input_shape, arch, weights, trust_torchscript)
    return model, spec


def open_teacher(
    source: str, num_classes: int, input_shape: tuple[int, int, int], arch: str | None = None, weights: str | None = None,
    trust_torchscript: bool = False,
) -> tuple[nn.Module, ModelSpec | None, Adapted | None]:
    """`load_teacher`, plus what pretrained weights needed to fit (edgekd.models.weights): None for
    edgekd's own checkpoints and for code files, which fit as they are or not at all."""
    from edgekd.models import teacher_files

    path = Path(source)
    if not path.exists():
        if weights is None:
            raise BadInputError(
                f"teacher '{source}' is neither a file nor an architecture with --teacher-weights FILE"
            )
        return _named_teacher(source, Path(weights), num_classes, input_shape)
    teacher_files.require_regular_file(path)
    if path.suffix == ".pt2":
        if not zipfile.is_zipfile(path):
            raise BadInputError(f"{path}: not a loadable torch.export archive (not a zip file)")
        try:
            with _quiet_logger("torch.export"):  # it logs its own traceback before raising
                program = teacher_files.load_pt2(path)
        except BadInputError:
            raise
        except Exception as err:
            raise BadInputError(f"{path}: not a loadable torch.export archive ({type(err).__name__})") from None
        return ExportedTeacher(program, path), None, None
    if teacher_files.is_torchscript(path):
        teacher_files.require_trusted_torchscript(path, trust_torchscript)
        try:
            return torch.jit.load(str(path), map_location="cpu"), None, None
        except Exception as err:
            raise BadInputError(f"{path}: not a loadable TorchScript file ({type(err).__name__})") from None
    payload = _torch_load(path)
    if isinstance(payload, dict) and "state_dict" in payload and "spec" in payload:
        spec = ModelSpec.from_payload(payload["spec"])
        if spec.num_classes != num_classes:
            raise BadInputError(f"{path}: teacher has {spec.num_classes} classes, the data has {num_classes}")
        return load_state(spec.build(), payload["state_dict"], str(path)), spec, None
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        if arch is None:
            raise BadInputError(f"{path} is a bare state dict: name its architecture with --teacher-arch")
        return _pretrained(ModelSpec(canonical_arch(arch), num_classes, tuple(input_shape)), payload, str(path))
    raise BadInputError(f"{path}: not an edgekd checkpoint, state dict, TorchScript or torch.export file")


@contextmanager
def _quiet_logger(name: str):
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class ExportedTeacher(nn.Module):
    """A torch.export program as a teacher. Its graph was fixed when it was exported (inference
    mode, one input), so `train()`/`eval()` only record the mode: an exported graph has no switch."""

    def __init__(self, program, path: Path):
        super().__init__()
        inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
        if len(inputs) != 1:
            raise BadInputError(f"{path}: the exported program takes {len(inputs)} inputs; a teacher takes one image batch")
        shape = inputs[0].meta.get("val").shape if inputs[0].meta.get("val") is not None else None
        if shape is not None and len(shape) > 0 and isinstance(shape[0], int):
            raise BadInputError(
                f"{path}: exported with a fixed batch of {shape[0]}; export it with a dynamic batch: "
                "torch.export.export(model, (x,), dynamic_shapes={'x': {0: torch.export.Dim('batch')}})")
        self.input_shape = tuple(d if isinstance(d, int) else None for d in shape[1:]) if shape is not None else None
        self.program = program.module()

    def train(self, mode: bool = True) -> "ExportedTeacher":
        self.training = mode
        return self

    def forward(self, x):
        return self.program(x)


def _named_teacher(name: str, weights: Path, num_classes: int, input_shape):
    spec = ModelSpec(canonical_arch(name), num_classes, tuple(input_shape))
    return _pretrained(spec, read_weights(weights, "teacher weights"), str(weights))


def read_weights(path: Path, what: str) -> object:
    """A weights file, read without running code (weights_only); one line when it is not one."""
    if not path.exists():
        raise BadInputError(f"{what} not found: {path}")
    from edgekd.models.teacher_files import require_regular_file

    require_regular_file(path, what)
    return _torch_load(path)


def _pretrained(spec: ModelSpec, state: object, source: str):
    model = spec.build()
    return model, spec, fit_pretrained(model, state, source)


def checkpoint_payload(model: nn.Module, spec: ModelSpec | None, **extra) -> dict:
    payload = {"state_dict": model.state_dict(), **extra}
    if spec is not None:
        payload["spec"] = {"arch": spec.arch, "num_classes": spec.num_classes,
                           "input_shape": list(spec.input_shape), "width": spec.width}
    return payload


def save_checkpoint(model: nn.Module, spec: ModelSpec | None, path: Path, **extra) -> None:
    from edgekd.runfolder import atomic_torch_save

    atomic_torch_save(checkpoint_payload(model, spec, **extra), path)


def library_preprocessing(arch: str) -> dict | None:
    """A timm model's own preprocessing (its pretrained_cfg: mean, std, interpolation, crop), for
    `edgekd.data.preprocessing`; None for edgekd's and torchvision's models, which state none here."""
    canonical = canonical_arch(arch)
    if not canonical.startswith("timm:"):
        return None
    cfg = _timm(required=True).models.get_pretrained_cfg(canonical.split(":", 1)[1])
    if cfg is None:
        return None
    return {"mean": tuple(cfg.mean), "std": tuple(cfg.std), "interpolation": cfg.interpolation or "bilinear",
            "crop_fraction": cfg.crop_pct or 0.875, "source": f"timm's pretrained_cfg for {canonical}"}
