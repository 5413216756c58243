"""Fit the latency estimator's per-layer-kind efficiencies, and measure its error on what it was not fitted on.

Two sets of timings:
- published phone-CPU timings (edgekd/targets/calibration/published.csv, each row with its source):
  TFLite, 4 threads, Pixel 3 and Pixel 4. Fitted on the families marked `fit` (MobileNet V1,
  Inception), checked on the families marked `check` (MobileNet V2, MnasNet, EfficientNet-Lite):
  the split is by family, never by row.
- this machine's ONNX Runtime timings (host-cpu, FP32 and INT8 QDQ, batch 1, 2 threads), measured
  here: fitted on MobileNet V2, MnasNet, EfficientNet-Lite0, GoogLeNet, SqueezeNet and edgekd's
  teacher; checked on ResNet-18, ResNet-50, MobileNet V3 (large and small) at 224 px and the default
  student at 28 px.

- published Jetson Orin timings (same csv; TensorRT on the GPU, batch 1): MLPerf Inference
  SingleStream p50 (v2.0, v3.1) and the Ultralytics Jetson guide's per-image times. One calibration
  (fractions of the peak) for the three Orin targets, fitted on RetinaNet, SSD-ResNet34 and YOLO11,
  checked on ResNet-50 and SSD-MobileNet-v1; `--write-targets` writes it into edgekd/targets/jetson-*.toml.

For each: the plain roofline's error and the calibrated estimate's, as estimated / measured, and
for EfficientNet-Lite the growth from Lite0 to each size and the INT8 speed-up against the
published ones. It writes the fitted `[calibration]` tables to benchmarks/out/ and the features of
the published architectures to edgekd/targets/calibration/published_features.csv (what `edgekd
calibrate` refits from, without building the architectures again).

    pip install '.[bench]'                         # timm: EfficientNet-Lite, Inception-v4
    python benchmarks/calibrate_estimator.py       # ~10 min on 2 cores: exports, INT8 quantization, timing
    python benchmarks/calibrate_estimator.py --published-only   # seconds once the features exist
    python benchmarks/calibrate_estimator.py --published-only --write-targets   # and the Jetson targets' [calibration]

Weights are random (seed 0): latency does not depend on their values.
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
import tomllib
from pathlib import Path

import torch
from torch import nn

from edgekd.benchmarking import host, write_results
from edgekd.config import Calibration, Hardware, load_target
from edgekd.measure.calibrate import Features, Point, calibration_toml, error_of, fit, graph_features, ratios, roofline_ms
from edgekd.export.onnx_file import export_onnx
from estimator import RandomImages  # benchmarks/estimator.py, beside this script

HERE = Path(__file__).resolve().parent
CALIBRATION = HERE.parent / "edgekd" / "targets" / "calibration"
OUT = HERE / "out"


def mobilenet_v1(alpha: float) -> nn.Module:
    """MobileNet V1 (Howard et al. 2017, Table 1) at width `alpha`."""
    def c(n):
        return max(8, int(n * alpha))

    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                             nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())

    plan = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)] + \
        [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
    layers = [nn.Conv2d(3, c(32), 3, 2, 1, bias=False), nn.BatchNorm2d(c(32)), nn.ReLU6()]
    layers += [block(c(a), c(b), s) for a, b, s in plan]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c(1024), 1001))


# ------------------------------------------------------------------ Jetson models (published TensorRT timings)
# Rebuilt from their published definitions, random weights: what the estimator reads is the layer shapes.

def _cbr(cin, cout, k, stride=1, pad=None, groups=1, act=None):
    """Conv (no bias) + BatchNorm + activation: BatchNorm folds into the conv on export."""
    pad = k // 2 if pad is None else pad
    layers = [nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act if act is not None else nn.ReLU())


class SSDMobileNetV1(nn.Module):
    """MLPerf's SSD-MobileNet-v1 (TF object detection API ssd_mobilenet_v1_coco_2018_01_28), 300x300:
    MobileNet V1 1.0 to conv13, four extra layers (1x1 of half the depth, then 3x3 stride 2 to
    512, 256, 256, 128), 1x1 box predictors with 3 anchors on conv11 and 6 on the rest, 91 classes."""

    def __init__(self, classes: int = 91):
        super().__init__()
        body = mobilenet_v1(1.0)
        self.to_conv11 = nn.Sequential(*list(body.children())[:14])  # conv0 + separable blocks 1-11: 512 @ 19x19
        self.to_conv13 = nn.Sequential(*list(body.children())[14:16])  # blocks 12-13: 1024 @ 10x10
        depths, extra, cin = (512, 256, 256, 128), [], 1024
        for d in depths:
            extra.append(nn.Sequential(_cbr(cin, d // 2, 1, act=nn.ReLU6()), _cbr(d // 2, d, 3, 2, act=nn.ReLU6())))
            cin = d
        self.extra = nn.ModuleList(extra)
        feats, anchors = (512, 1024, *depths), (3, 6, 6, 6, 6, 6)
        self.box = nn.ModuleList(nn.Conv2d(c, a * 4, 1) for c, a in zip(feats, anchors))
        self.cls = nn.ModuleList(nn.Conv2d(c, a * classes, 1) for c, a in zip(feats, anchors))

    def forward(self, x):
        f11 = self.to_conv11(x)
        feats = [f11, self.to_conv13(f11)]
        for layer in self.extra:
            feats.append(layer(feats[-1]))
        return (torch.cat([b(f).flatten(1) for b, f in zip(self.box, feats)], 1),
                torch.cat([c(f).flatten(1) for c, f in zip(self.cls, feats)], 1))


class SSDResNet34(nn.Module):
    """MLPerf's SSD-ResNet34 at 1200x1200 (mlcommons/inference, vision/classification_and_detection/
    python/models/ssd_r34.py, strides [3, 3, 2, 2, 2, 2]): torchvision ResNet-34 to layer3 with
    layer3's stride set to 1 (256 channels at 150x150), five extra blocks (1x1, then 3x3) to 512,
    512, 256, 256, 256 channels, and 3x3 heads at stride 3 with 4, 6, 6, 6, 4, 4 defaults on the
    50, 25, 13, 7, 3, 3 grids (15,130 boxes), 81 classes. Decoding and NMS are left out."""

    def __init__(self, classes: int = 81):
        import torchvision

        super().__init__()
        r = torchvision.models.resnet34(weights=None)
        block = r.layer3[0]
        block.conv1.stride, block.downsample[0].stride = (1, 1), (1, 1)
        self.body = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)
        out = (256, 512, 512, 256, 256, 256)
        plan = ((256, 2, 1), (256, 2, 1), (128, 2, 1), (128, 2, 0), (128, 1, 0))  # 1x1 width, 3x3 stride, pad
        self.extra = nn.ModuleList(nn.Sequential(nn.Conv2d(cin, mid, 1), nn.ReLU(), nn.Conv2d(mid, cout, 3, s, p), nn.ReLU())
                                   for cin, cout, (mid, s, p) in zip(out[:-1], out[1:], plan))
        defaults = (4, 6, 6, 6, 4, 4)
        self.loc = nn.ModuleList(nn.Conv2d(c, d * 4, 3, 3, 1) for c, d in zip(out, defaults))
        self.conf = nn.ModuleList(nn.Conv2d(c, d * classes, 3, 3, 1) for c, d in zip(out, defaults))

    def forward(self, x):
        feats = [self.body(x)]
        for layer in self.extra:
            feats.append(layer(feats[-1]))
        return (torch.cat([l(f).flatten(1) for l, f in zip(self.loc, feats)], 1),
                torch.cat([c(f).flatten(1) for c, f in zip(self.conf, feats)], 1))


class RetinaNetResNeXt50(nn.Module):
    """MLPerf's RetinaNet at 800x800 (mlcommons/training single_stage_detector): torchvision
    ResNeXt-50 32x4d with an FPN on C3-C5 plus P6/P7 (LastLevelP6P7(256, 256)), and torchvision's
    RetinaNet head (4 convs of 256 per branch, 9 anchors, 264 OpenImages classes). The decoding and
    NMS after the head are left out (TensorRT runs them in a plugin)."""

    def __init__(self, classes: int = 264):
        import torchvision
        from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
        from torchvision.models.detection.retinanet import RetinaNetHead
        from torchvision.ops.feature_pyramid_network import LastLevelP6P7

        super().__init__()
        self.backbone = _resnet_fpn_extractor(torchvision.models.resnext50_32x4d(weights=None), 5,
                                              returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
        head = RetinaNetHead(256, 9, classes)
        self.cls_conv, self.cls_out = head.classification_head.conv, head.classification_head.cls_logits
        self.box_conv, self.box_out = head.regression_head.conv, head.regression_head.bbox_reg

    def forward(self, x):
        feats = list(self.backbone(x).values())
        return (torch.cat([self.cls_out(self.cls_conv(f)).flatten(1) for f in feats], 1),
                torch.cat([self.box_out(self.box_conv(f)).flatten(1) for f in feats], 1))


# YOLO11 (Ultralytics, ultralytics/cfg/models/11/yolo11.yaml and nn/modules/{conv,block,head}.py),
# rebuilt here so that no ultralytics package is needed: depth, width, max channels per scale
YOLO11_SCALES = {"n": (0.50, 0.25, 1024), "s": (0.50, 0.50, 1024), "m": (0.50, 1.00, 512),
                 "l": (1.00, 1.00, 512), "x": (1.00, 1.50, 512)}


def _yconv(cin, cout, k=1, s=1, g=1, act=True):
    """Ultralytics Conv: conv (no bias, autopad) + BatchNorm + SiLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout),
                         nn.SiLU() if act else nn.Identity())


class _YBottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1, self.cv2, self.add = _yconv(c1, c_, 3), _yconv(c_, c2, 3), shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class _YC3k(nn.Module):
    def __init__(self, c1, c2, n=2, shortcut=True, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1, self.cv2, self.cv3 = _yconv(c1, c_), _yconv(c1, c_), _yconv(2 * c_, c2)
        self.m = nn.Sequential(*(_YBottleneck(c_, c_, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class _YC3k2(nn.Module):
    def __init__(self, c1, c2, n=1, c3k=False, e=0.5, shortcut=True):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1, self.cv2 = _yconv(c1, 2 * self.c), _yconv((2 + n) * self.c, c2)
        self.m = nn.ModuleList(_YC3k(self.c, self.c, 2, shortcut) if c3k else _YBottleneck(self.c, self.c, shortcut)
                               for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class _YSPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1, self.cv2, self.m = _yconv(c1, c_), _yconv(c_ * 4, c2), nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class _YAttention(nn.Module):
    def __init__(self, dim, num_heads, attn_ratio=0.5):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        self.qkv = _yconv(dim, dim + self.key_dim * num_heads * 2, act=False)
        self.proj, self.pe = _yconv(dim, dim, act=False), _yconv(dim, dim, 3, g=dim, act=False)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).view(b, self.num_heads, self.key_dim * 2 + self.head_dim, h * w).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(x)


class _YPSABlock(nn.Module):
    def __init__(self, c, num_heads):
        super().__init__()
        self.attn = _YAttention(c, num_heads)
        self.ffn = nn.Sequential(_yconv(c, c * 2), _yconv(c * 2, c, act=False))

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.ffn(x)


class _YC2PSA(nn.Module):
    def __init__(self, c1, n=1):
        super().__init__()
        self.c = int(c1 * 0.5)
        self.cv1, self.cv2 = _yconv(c1, 2 * self.c), _yconv(2 * self.c, c1)
        self.m = nn.Sequential(*(_YPSABlock(self.c, self.c // 64) for _ in range(n)))

    def forward(self, x):
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class YOLO11(nn.Module):
    """YOLO11 n/s/m/l/x (80 classes) with the export graph's decoding (DFL, boxes, sigmoid), no NMS."""

    def __init__(self, scale: str, classes: int = 80):
        super().__init__()
        depth, width, max_ch = YOLO11_SCALES[scale]

        def ch(c):
            return int(math.ceil(min(c, max_ch) * width / 8) * 8)

        def reps(n):
            return max(round(n * depth), 1) if n > 1 else n

        c3k = scale in "mlx"  # parse_model: every C3k2 of the m, l and x scales uses C3k blocks
        self.b0, self.b1 = _yconv(3, ch(64), 3, 2), _yconv(ch(64), ch(128), 3, 2)
        self.b2 = _YC3k2(ch(128), ch(256), reps(2), c3k, 0.25)
        self.b3 = _yconv(ch(256), ch(256), 3, 2)
        self.b4 = _YC3k2(ch(256), ch(512), reps(2), c3k, 0.25)
        self.b5 = _yconv(ch(512), ch(512), 3, 2)
        self.b6 = _YC3k2(ch(512), ch(512), reps(2), True)
        self.b7 = _yconv(ch(512), ch(1024), 3, 2)
        self.b8 = _YC3k2(ch(1024), ch(1024), reps(2), True)
        self.b9 = _YSPPF(ch(1024), ch(1024))
        self.b10 = _YC2PSA(ch(1024), reps(2))
        self.up = nn.Upsample(None, 2, "nearest")
        self.h13 = _YC3k2(ch(1024) + ch(512), ch(512), reps(2), c3k)
        self.h16 = _YC3k2(ch(512) + ch(512), ch(256), reps(2), c3k)
        self.h17 = _yconv(ch(256), ch(256), 3, 2)
        self.h19 = _YC3k2(ch(256) + ch(512), ch(512), reps(2), c3k)
        self.h20 = _yconv(ch(512), ch(512), 3, 2)
        self.h22 = _YC3k2(ch(512) + ch(1024), ch(1024), reps(2), True)
        levels, self.reg_max, self.nc = (ch(256), ch(512), ch(1024)), 16, classes
        c2, c3 = max(16, levels[0] // 4, 64), max(levels[0], min(classes, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(_yconv(x, c2, 3), _yconv(c2, c2, 3), nn.Conv2d(c2, 64, 1)) for x in levels)
        self.cv3 = nn.ModuleList(nn.Sequential(nn.Sequential(_yconv(x, x, 3, g=x), _yconv(x, c3)),
                                               nn.Sequential(_yconv(c3, c3, 3, g=c3), _yconv(c3, c3)),
                                               nn.Conv2d(c3, classes, 1)) for x in levels)
        self.dfl = nn.Conv2d(16, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(16, dtype=torch.float).view(1, 16, 1, 1)

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b10(self.b9(self.b8(self.b7(p4))))
        h13 = self.h13(torch.cat((self.up(p5), p4), 1))
        h16 = self.h16(torch.cat((self.up(h13), p3), 1))
        h19 = self.h19(torch.cat((self.h17(h16), h13), 1))
        h22 = self.h22(torch.cat((self.h20(h19), p5), 1))
        outs, anchors, strides = [], [], []
        for i, (f, stride) in enumerate(((h16, 8), (h19, 16), (h22, 32))):
            outs.append(torch.cat((self.cv2[i](f), self.cv3[i](f)), 1).flatten(2))
            h, w = f.shape[2:]
            sy, sx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
            anchors.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), float(stride)))
        y = torch.cat(outs, 2)
        anchor, stride = torch.cat(anchors).T.unsqueeze(0), torch.cat(strides).T.unsqueeze(0)
        box, cls = y.split((4 * self.reg_max, self.nc), 1)
        b, _, a = box.shape
        dist = self.dfl(box.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(b, 4, a)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = anchor - lt, anchor + rb
        return torch.cat((torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * stride, cls.sigmoid()), 1)


JETSON_BUILDERS = {"ssd_mobilenet_v1": SSDMobileNetV1, "ssd_resnet34": SSDResNet34,
                   "retinanet_resnext50_fpn": RetinaNetResNeXt50,
                   **{f"yolo11{s}": (lambda s=s: YOLO11(s)) for s in YOLO11_SCALES}}


def build(name: str) -> nn.Module:
    import torchvision

    if name in JETSON_BUILDERS:
        return JETSON_BUILDERS[name]()
    if name.startswith("mobilenet_v1_"):
        return mobilenet_v1(float(name.rsplit("_", 1)[1]))
    if name.startswith("mnasnet_"):
        alpha = name.rsplit("_", 1)[1].replace(".", "_").rstrip("0").rstrip("_")
        return torchvision.models.get_model(f"mnasnet{alpha if '_' in alpha else alpha + '_0'}", weights=None)
    if name.startswith("mobilenet_v2"):
        return torchvision.models.mobilenet_v2(weights=None)
    if name == "inception_v1":
        return torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    if name == "inception_v3":
        return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    if name in ("inception_v4", "inception_resnet_v2") or name.startswith("efficientnet_lite"):
        import timm

        return timm.create_model(name, pretrained=False)
    return torchvision.models.get_model(name, weights=None)


def export(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    if not path.is_file():
        torch.manual_seed(0)
        export_onnx(model.eval(), torch.zeros(1, *shape), path)
    return path


# ------------------------------------------------------------------ published phone timings

def published_rows() -> list[dict]:
    with open(CALIBRATION / "published.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def devices() -> dict[str, Hardware]:
    return {k: Hardware(**v) for k, v in tomllib.loads((CALIBRATION / "devices.toml").read_text()).items()}


def published_features(rows: list[dict], rebuild: bool) -> dict[tuple[str, int, str], Features]:
    path = CALIBRATION / "published_features.csv"
    found = {}
    if path.is_file() and not rebuild:
        with open(path, newline="") as fh:
            found = {(r["model"], int(r["input"]), r["precision"]): Features.from_dict(r) for r in csv.DictReader(fh)}
    wanted = {(r["model"], int(r["input"]), r["precision"]) for r in rows}
    missing = sorted(wanted - set(found))
    if missing:
        with tempfile.TemporaryDirectory() as scratch:
            for model, size, precision in missing:
                onnx_path = export(build(model), (3, size, size), Path(scratch) / f"{model}-{size}.onnx")
                found[(model, size, precision)] = graph_features(onnx_path, 1, precision=precision)[0]
                print(f"features: {model} {size} px {precision}", flush=True)
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            keys = list(next(iter(found.values())).as_dict())
            writer.writerow(["model", "input", "precision", *keys])
            for (model, size, precision), feats in sorted(found.items()):
                writer.writerow([model, size, precision, *feats.as_dict().values()])
    return found


def published_points(rebuild: bool = False) -> list[tuple[Point, str, str]]:
    """(point, split, device) of every published row."""
    rows, hardware = published_rows(), devices()
    features = published_features(rows, rebuild)
    return [(Point(f"{r['model']}@{r['input']} ({r['device']})", r["family"], r["precision"], float(r["latency_ms"]),
                   features[(r["model"], int(r["input"]), r["precision"])], hardware[r["device"]], r["source"]),
             r["split"], r["device"]) for r in rows]


# the published Jetson devices and the target each stands for: one calibration (fractions of the
# peak, TensorRT on an Orin GPU) is fitted on all of them and written into the three targets
JETSON_TARGETS = {"agx-orin-64gb": "jetson-agx-orin", "orin-nx-16gb": "jetson-orin-nx", "orin-nano-super": "jetson-orin-nano"}
JETSON_SOURCE = ("published TensorRT timings on Jetson Orin GPUs, batch 1: MLPerf Inference SingleStream (v2.0, v3.1) and "
                 "the Ultralytics Jetson guide (edgekd/targets/calibration/published.csv)")
TARGETS = HERE.parent / "edgekd" / "targets"
CALIBRATION_NOTE = "# Fitted by benchmarks/calibrate_estimator.py on published"


def write_target_calibration(target: str, calibration: Calibration) -> Path:
    """Replace the `[calibration]` tables at the end of a target file with `calibration`."""
    path = TARGETS / f"{target}.toml"
    text = path.read_text()
    at = text.find(CALIBRATION_NOTE)
    if at < 0:
        at = text.find("[calibration]")
    head = (text if at < 0 else text[:at]).rstrip("\n")
    note = (f"{CALIBRATION_NOTE} TensorRT timings\n"
            "# of Jetson Orin GPUs (AGX Orin, Orin NX, Orin Nano Super), batch 1: one fit for all three Orin\n"
            "# targets. Error on the families it did not see, and its sources: docs/latency_estimate.md\n")
    path.write_text(head + "\n\n" + note + calibration_toml(calibration))
    return path


# ------------------------------------------------------------------ this machine

# each fit family at 224 px and at 32 px: the small inputs are what pins the per-layer cost, which
# dominates a 28-px student and which the 224-px models alone cannot tell from slow layers
HOST_FIT = [(name, size, family) for name, family in (("mobilenet_v2", "mobilenet_v2"), ("mnasnet1_0", "mnasnet"),
                                                       ("efficientnet_lite0", "efficientnet_lite"), ("googlenet", "inception"),
                                                       ("squeezenet1_1", "squeezenet"))
            for size in (224, 32)] + [("edgekd_resnet_fc", 28, "edgekd_resnet")]
HOST_CHECK = [("resnet18", 224, "resnet"), ("resnet50", 224, "resnet"), ("mobilenet_v3_large", 224, "mobilenet_v3"),
              ("mobilenet_v3_small", 224, "mobilenet_v3"), ("edgekd_cnn_fc", 28, "edgekd_cnn")]


def host_files(folder: Path, name: str, size: int) -> dict[str, Path]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if name.startswith("edgekd_"):
        from edgekd.models import create_model

        shape = (1, size, size)
        model = create_model(name, 10, shape)
    else:
        shape = (3, size, size)
        model = build(name)
    fp32 = export(model, shape, folder / f"{name}-{size}.onnx")
    prepared, int8 = folder / f"{name}-{size}.prep.onnx", folder / f"{name}-{size}.int8.onnx"
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(str(prepared), str(int8), RandomImages("input", shape, count=8), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return {"fp32": fp32, "int8": int8}


def host_points(folder: Path) -> list[tuple[Point, str, dict]]:
    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

    target = load_target("host-cpu")
    out = []
    for split, specs in (("fit", HOST_FIT), ("check", HOST_CHECK)):
        for name, size, family in specs:
            for precision, path in host_files(folder, name, size).items():
                measured = OnnxRuntimeRunner(path, target.threads).measure(1, label=f"{name} {precision}")
                features, found = graph_features(path, 1)
                out.append((Point(f"{name}@{size}", family, found, measured.p50, features, target.hardware,
                                  f"measured here: {measured.runtime}"), split, {"p99": measured.p99, "runs": measured.runs}))
                print(f"host: {name} {size} px {precision} {measured.p50:.3f} ms", flush=True)
    return out


# ------------------------------------------------------------------ fit and report

def calibrate(points: list[tuple[Point, str]], source: str) -> tuple[Calibration, dict]:
    fit_points = [p for p, split in points if split == "fit"]
    check_points = [p for p, split in points if split == "check"]
    efficiencies = fit(fit_points)
    check = ratios(check_points, efficiencies)
    both = ratios(fit_points, efficiencies) + check
    families = sorted({p.family for p in fit_points})
    # the interval covers every point seen, fitted and checked: the wider of the two
    error = error_of(both)
    calibration = Calibration(source=source, fitted_on=", ".join(families), error=error, **efficiencies)
    return calibration, {"check": error_of(check).model_dump(), "fit": error_of(ratios(fit_points, efficiencies)).model_dump()}


def table(points: list[tuple[Point, str]], calibration: Calibration, size: dict | None = None) -> list[dict]:
    effs = {k: getattr(calibration, k) for k in ("int8", "fp16", "fp32") if getattr(calibration, k) is not None}
    rows = []
    for point, split in points:
        estimated = ratios([point], effs)[0] * point.measured_ms
        rows.append({"model": point.model, "family": point.family, "precision": point.precision, "split": split,
                     "measured_ms": point.measured_ms, "calibrated_ms": round(estimated, 3),
                     "calibrated_ratio": round(estimated / point.measured_ms, 3),
                     "roofline_ms": round(roofline_ms(point), 3),
                     "roofline_ratio": round(roofline_ms(point) / point.measured_ms, 3)})
    return rows


def lite_ratios(rows: list[dict]) -> list[dict]:
    """EfficientNet-Lite: growth over Lite0 and the INT8 speed-up, published against estimated."""
    lite = {(r["model"].split("@")[0], r["precision"]): r for r in rows if r["family"] == "efficientnet_lite"}
    out = []
    for i in range(5):
        name = f"efficientnet_lite{i}"
        entry = {"model": name}
        for prec in ("fp32", "int8"):
            base, this = lite[("efficientnet_lite0", prec)], lite[(name, prec)]
            entry[f"growth_{prec}_published"] = round(this["measured_ms"] / base["measured_ms"], 3)
            entry[f"growth_{prec}_estimated"] = round(this["calibrated_ms"] / base["calibrated_ms"], 3)
        fp32, int8 = lite[(name, "fp32")], lite[(name, "int8")]
        entry["speedup_published"] = round(fp32["measured_ms"] / int8["measured_ms"], 3)
        entry["speedup_estimated"] = round(fp32["calibrated_ms"] / int8["calibrated_ms"], 3)
        out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--published-only", action="store_true", help="skip this machine's timings")
    parser.add_argument("--rebuild-features", action="store_true")
    parser.add_argument("--write-targets", action="store_true",
                        help="write the fitted Jetson calibration into edgekd/targets/jetson-*.toml")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    cpu = host()["cpu"]
    result = {}

    published = published_points(args.rebuild_features)
    phone_pairs = [(p, s) for p, s, device in published if device not in JETSON_TARGETS]
    cal, summary = calibrate(phone_pairs, "published TFLite CPU timings, Pixel 3 and Pixel 4, 4 threads "
                                          "(edgekd/targets/calibration/published.csv)")
    rows = table(phone_pairs, cal)
    result["phone"] = {"calibration": cal.model_dump(), "errors": summary, "rows": rows, "lite": lite_ratios(rows)}
    (OUT / "phone-calibration.toml").write_text(calibration_toml(cal))
    _print("phone CPU (published)", rows, summary, cal)

    jetson = [(p, s, device) for p, s, device in published if device in JETSON_TARGETS]
    jetson_pairs = [(p, s) for p, s, _ in jetson]
    cal, summary = calibrate(jetson_pairs, JETSON_SOURCE)
    rows = table(jetson_pairs, cal)
    for row, (_, _, device) in zip(rows, jetson):
        row["target"] = JETSON_TARGETS[device]
    result["jetson"] = {"calibration": cal.model_dump(), "errors": summary, "rows": rows}
    (OUT / "jetson-calibration.toml").write_text(calibration_toml(cal))
    if args.write_targets:
        for target in sorted(set(JETSON_TARGETS.values())):
            print("wrote", write_target_calibration(target, cal))
    _print("Jetson Orin GPUs, TensorRT (published)", rows, summary, cal)

    if not args.published_only:
        with tempfile.TemporaryDirectory() as scratch:
            measured = host_points(Path(scratch))
        host_pairs = [(p, s) for p, s, _ in measured]
        cal, summary = calibrate(host_pairs, f"ONNX Runtime on {cpu}, 2 threads, measured by "
                                             f"benchmarks/calibrate_estimator.py")
        rows = table(host_pairs, cal)
        result["host_cpu"] = {"calibration": cal.model_dump(), "errors": summary, "rows": rows}
        (OUT / "host-calibration.toml").write_text(calibration_toml(cal))
        _print("host-cpu (measured here)", rows, summary, cal)
    all_roofline = [r["roofline_ratio"] for part in ("phone", "host_cpu") if part in result for r in result[part]["rows"]]
    result["roofline_error"] = {"low": min(all_roofline), "high": max(all_roofline)}
    print(f"plain roofline, estimated / measured over every point: {min(all_roofline):.3f} .. {max(all_roofline):.3f}")
    write_results("calibrate_estimator", result, markdown(result, cpu), out=OUT)


def markdown(result: dict, cpu: str) -> str:
    """The tables docs/latency_estimate.md shows, from this run (`cpu`: this machine's, host()["cpu"])."""
    out = []
    for part, title in (("phone", "Phone CPU (published timings)"), ("host_cpu", f"host-cpu ({cpu}, measured here)")):
        if part not in result:
            continue
        section = result[part]
        out += [f"### {title}", "", "| model | precision | split | measured ms | calibrated ms | ratio | plain roofline ms | ratio |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['model']} | {r['precision']} | {r['split']} | {r['measured_ms']:g} | {r['calibrated_ms']:.3f} | "
                f"{r['calibrated_ratio']:.2f} | {r['roofline_ms']:.3f} | {r['roofline_ratio']:.2f} |" for r in section["rows"]]
        out += ["", "| error (estimated / measured) | points | median | worst | range |", "|---|---|---|---|---|"]
        for split in ("check", "fit"):
            for precision in ("fp32", "int8"):
                values = [r["calibrated_ratio"] for r in section["rows"] if r["split"] == split and r["precision"] == precision]
                if values:
                    err = error_of(values)
                    out.append(f"| {split} {precision} | {err.points} | {err.median:.2f}x | {err.worst:.2f}x | "
                               f"{err.low:.2f} - {err.high:.2f} |")
        cal = section["calibration"]
        out += ["", "| fitted | " + " | ".join(("conv", "depthwise", "pointwise", "fc", "pool", "memory", "layer_us")) + " |",
                "|---|" + "---|" * 7]
        for precision in ("int8", "fp32"):
            if cal.get(precision):
                out.append(f"| {precision} | " + " | ".join(f"{cal[precision][k]:g}" for k in
                                                      ("conv", "depthwise", "pointwise", "fc", "pool", "memory", "layer_us")) + " |")
        out.append("")
        if "lite" in section:
            out += ["EfficientNet-Lite: growth over Lite0 and INT8 speed-up (FP32 ms / INT8 ms), published and estimated:", "",
                    "| model | FP32 growth pub. | est. | INT8 growth pub. | est. | INT8 speed-up pub. | est. |", "|---|---|---|---|---|---|---|"]
            out += [f"| {r['model']} | {r['growth_fp32_published']:.2f} | {r['growth_fp32_estimated']:.2f} | "
                    f"{r['growth_int8_published']:.2f} | {r['growth_int8_estimated']:.2f} | {r['speedup_published']:.2f} | "
                    f"{r['speedup_estimated']:.2f} |" for r in section["lite"]]
            out.append("")
    if "jetson" in result:
        out += jetson_markdown(result["jetson"])
    return "\n".join(out)


def jetson_markdown(section: dict) -> list[str]:
    """The Jetson rows, and the error per target and split (estimated / measured)."""
    out = ["### Jetson Orin GPUs, TensorRT (published timings)", "",
           "| model | target | precision | split | measured ms | calibrated ms | ratio | plain roofline ms | ratio |",
           "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['target']} | {r['precision']} | {r['split']} | {r['measured_ms']:g} | {r['calibrated_ms']:.3f} | "
            f"{r['calibrated_ratio']:.2f} | {r['roofline_ms']:.3f} | {r['roofline_ratio']:.2f} |" for r in section["rows"]]
    out += ["", "| target | split | precision | points | median | worst | range |", "|---|---|---|---|---|---|---|"]
    for target in sorted({r["target"] for r in section["rows"]}):
        for split in ("check", "fit"):
            for precision in ("int8", "fp16"):
                values = [r["calibrated_ratio"] for r in section["rows"]
                          if (r["target"], r["split"], r["precision"]) == (target, split, precision)]
                if values:
                    err = error_of(values)
                    out.append(f"| {target} | {split} | {precision} | {err.points} | {err.median:.2f}x | {err.worst:.2f}x | "
                               f"{err.low:.2f} - {err.high:.2f} |")
    cal = section["calibration"]
    kinds = ("conv", "depthwise", "pointwise", "fc", "pool", "memory", "layer_us")
    out += ["", "| fitted | " + " | ".join(kinds) + " |", "|---|" + "---|" * 7]
    out += [f"| {p} | " + " | ".join(f"{cal[p][k]:g}" for k in kinds) + " |" for p in ("int8", "fp16") if cal.get(p)]
    return out + [""]


def _print(title: str, rows: list[dict], summary: dict, cal: Calibration) -> None:
    print(f"\n== {title}")
    print(f"{'model':28} {'prec':5} {'split':6} {'measured':>9} {'calibr.':>9} {'ratio':>6} {'roofline':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['model']:28} {r['precision']:5} {r['split']:6} {r['measured_ms']:9.3f} {r['calibrated_ms']:9.3f} "
              f"{r['calibrated_ratio']:6.2f} {r['roofline_ms']:9.3f} {r['roofline_ratio']:6.2f}")
    print("check:", summary["check"], "\nfit:", summary["fit"])
    print(calibration_toml(cal))


if __name__ == "__main__":
    main()
