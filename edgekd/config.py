"""Targets and profiles as validated data.

A *target* is a fact sheet about hardware (runtime, precision, budget, peak figures);
a *profile* is a compression recipe (which stages run, with their hyper-parameters).
Both are TOML files validated here, once, at the edge: everything past this module
receives typed objects, and a typo in a file is an error that names the file and field.
"""

from __future__ import annotations

import enum
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekd.errors import BadInputError

# package data, so a plain (non-editable) `pip install .` finds them; the repository's top-level
# targets/ and profiles/ are links to these folders
TARGETS_DIR = Path(__file__).resolve().parent / "targets"
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"

Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
# target and profile names end up in file names, shell scripts, plot labels and terminal output:
# a safe set of characters, so none of them can carry a command, markup or a path
SafeName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- targets


class Runtime(str, enum.Enum):
    ONNXRUNTIME_CPU = "onnxruntime-cpu"
    OPENVINO_CPU = "openvino-cpu"  # Intel's runtime (NNCF's own), the usual choice on x86 edge boxes
    TENSORRT = "tensorrt"


class Precision(str, enum.Enum):
    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"


class ActivationScheme(str, enum.Enum):
    SYMMETRIC_SIGNED = "symmetric-signed"  # signed INT8, zero point 0 everywhere: TensorRT's explicit quantization
    SYMMETRIC = "symmetric"  # zero point 0; non-negative (post-ReLU) tensors unsigned 0..255: ONNX Runtime CPU
    ASYMMETRIC = "asymmetric"  # a zero point per tensor (NNCF's mixed preset)


class TargetInput(Strict):
    batch: PositiveInt = 1  # batch the budget is stated for
    max_batch: PositiveInt = 32  # upper end of the TensorRT optimisation profile

    @model_validator(mode="after")
    def _batch_range(self):
        if self.max_batch < self.batch:
            raise ValueError(f"max_batch ({self.max_batch}) is below batch ({self.batch})")
        return self


class Budget(Strict):
    latency_p50_ms: Positive | None = None
    latency_p99_ms: Positive | None = None
    fps: Positive | None = None  # frames per second at `input.batch`; sets p50 = batch * 1000 / fps
    memory_mb: Positive | None = None  # weights in the deployed file; optional

    @model_validator(mode="after")
    def _one_latency(self):
        if self.latency_p50_ms is None and self.latency_p99_ms is None and self.fps is None:
            raise ValueError("needs latency_p50_ms, latency_p99_ms or fps")
        return self


class Hardware(Strict):
    """Peak figures for the roofline estimate (ops = 2 x MACs, as vendors count them)."""

    int8_tops: Positive
    fp16_tflops: Positive
    fp32_tflops: Positive
    memory_bandwidth_gbs: Positive
    layer_overhead_us: Annotated[float, Field(ge=0)]


class Efficiencies(Strict):
    """Achieved fraction of the peak, per layer kind (edgekd.measure.estimate.layer_kind): conv,
    pointwise and fc of the precision's peak ops; depthwise, pool and memory (elementwise) of the
    bandwidth, by the bytes they move; plus the time every layer costs."""

    conv: Annotated[float, Field(gt=0, le=1)]
    depthwise: Annotated[float, Field(gt=0, le=1)]
    pointwise: Annotated[float, Field(gt=0, le=1)]
    fc: Annotated[float, Field(gt=0, le=1)]
    pool: Annotated[float, Field(gt=0, le=1)]
    memory: Annotated[float, Field(gt=0, le=1)]
    layer_us: Annotated[float, Field(ge=0)]


class EstimateError(Strict):
    """estimated / measured on the points a calibration was checked on: the measured time lies in
    [estimate / high, estimate / low]."""

    low: Positive
    high: Positive
    points: PositiveInt
    worst: Positive | None = None  # max(r, 1/r) over the points
    median: Positive | None = None  # median of max(r, 1/r)

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError("estimate error: low must not exceed high")
        return self


class Calibration(Strict):
    """A target's fitted efficiencies (edgekd calibrate, benchmarks/calibrate_estimator.py): per
    precision, with the error measured on points the fit did not use, and where the points came from."""

    source: str
    fitted_on: str = ""
    int8: Efficiencies | None = None
    fp16: Efficiencies | None = None
    fp32: Efficiencies | None = None
    error: EstimateError


class TargetDevice(Strict):
    """Which physical device a target's budget is for: latency counts as measured only on a machine
    that matches (edgekd.measure.device). Every criterion given must hold; a list holds when any
    of its entries does (case-insensitive substrings, except CPU flags, which must all be present).

    kind = "this-machine": whatever runs edgekd (host-cpu). kind = "cpu": `arch` plus CPU flags
    from /proc/cpuinfo (`cpu_flags`, all required) and/or `cpu_model` substrings of its
    "model name" / "CPU part" / "Hardware" lines. kind = "gpu": a CUDA GPU whose name contains one
    of `gpu_name` and/or whose compute capability is one of `compute_capability`; `board` substrings
    of /proc/device-tree/model tell Jetson modules apart (all Orins are sm 8.7 and named "Orin").
    """

    kind: Literal["this-machine", "cpu", "gpu"]
    name: str = ""  # how reports name the device, e.g. "Jetson Orin Nano 8GB"
    arch: Literal["x86_64", "aarch64"] | None = None
    cpu_flags: list[str] = []
    cpu_model: list[str] = []
    gpu_name: list[str] = []
    compute_capability: list[Annotated[str, Field(pattern=r"^\d+\.\d+$")]] = []
    board: list[str] = []

    @model_validator(mode="after")
    def _identifies_a_device(self):
        cpu_fields = {"arch": self.arch, "cpu_flags": self.cpu_flags, "cpu_model": self.cpu_model}
        gpu_fields = {"gpu_name": self.gpu_name, "compute_capability": self.compute_capability, "board": self.board}
        if self.kind == "this-machine":
            given = [k for k, v in {**cpu_fields, **gpu_fields}.items() if v]
            if given:
                raise ValueError(f"kind 'this-machine' takes no {', '.join(given)}")
        elif self.kind == "cpu":
            if self.arch is None or not (self.cpu_flags or self.cpu_model):
                raise ValueError("kind 'cpu' needs arch and cpu_flags or cpu_model (what /proc/cpuinfo shows on it)")
            if any(gpu_fields.values()):
                raise ValueError("kind 'cpu' takes no gpu_name, compute_capability or board")
        elif not (self.gpu_name or self.compute_capability):
            raise ValueError("kind 'gpu' needs gpu_name or compute_capability")
        if self.kind != "this-machine" and not self.name:
            raise ValueError(f"kind '{self.kind}' needs a name (how reports call the device)")
        return self

    @property
    def label(self) -> str:
        return self.name or "this machine"


class Target(Strict):
    name: SafeName
    description: str = ""
    aliases: list[SafeName] = []
    runtime: Runtime
    precision: Precision = Precision.INT8
    activations: ActivationScheme | None = None  # default: symmetric-signed for TensorRT, symmetric on CPUs
    machine: Literal["any", "x86_64", "aarch64"]  # CPU architecture of the device's host; "any" = this machine
    threads: PositiveInt = 1  # intra-op threads for ONNX Runtime
    tensorrt_dla: bool = False  # Jetson: the build script offers --useDLACore
    device: TargetDevice  # the device the budget is for; measured only on a machine that matches it
    input: TargetInput = TargetInput()
    budget: Budget
    # a target may tighten the profile's accuracy budget (points of top-1 against the teacher)
    max_accuracy_drop: Annotated[float, Field(ge=0, le=100)] | None = None
    hardware: Hardware
    calibration: Calibration | None = None  # fitted per-layer-kind efficiencies; None: the plain roofline

    @property
    def activation_scheme(self) -> ActivationScheme:
        if self.activations is not None:
            return self.activations
        return ActivationScheme.SYMMETRIC_SIGNED if self.runtime is Runtime.TENSORRT else ActivationScheme.SYMMETRIC

    @property
    def budget_p50_ms(self) -> float | None:
        if self.budget.latency_p50_ms is not None:
            return self.budget.latency_p50_ms
        if self.budget.fps is not None:
            return self.input.batch * 1000.0 / self.budget.fps
        return None

    @model_validator(mode="after")
    def _scheme_fits_runtime(self):
        if self.runtime is Runtime.TENSORRT and self.activations not in (None, ActivationScheme.SYMMETRIC_SIGNED):
            raise ValueError("activations: TensorRT supports symmetric signed INT8 only ('symmetric-signed')")
        return self


# ---------------------------------------------------------------- profiles


Augmentation = Literal["hflip", "shift", "crop", "jitter"]


class DataConfig(Strict):
    batch_size: PositiveInt = 256
    # seeded, class-stratified random subsets of each split (smoke runs); never "the first N"
    train_limit: PositiveInt | None = None
    val_limit: PositiveInt | None = None
    test_limit: PositiveInt | None = None
    # validation: this share of the training data, seeded and class-stratified, held out for every
    # choice edgekd makes (best recovery step, accuracy budget); the test split is only reported
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    # one ImageFolder tree with no train/ and held-out folder: this share becomes the test split
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    # training-time augmentation for the teacher and distillation: "hflip" (mirror left-right),
    # "shift" (random translation by up to 1/8 of the side, edges replicated). Unset: the built-in
    # Fashion-MNIST gets ["hflip"]; a user's images get ["shift"], safe for digits, text and signs.
    # For photos and pictures: "crop" (a random crop of 35-100% of the area, aspect 3:4 to 4:3,
    # resized back: the random-resized crop) and "jitter" (brightness, contrast and saturation +-20%)
    augment: list[Augmentation] | None = None
    workers: Annotated[int, Field(ge=0, le=64)] = 0
    # how a user's images become the network's input (ImageFolder data; the built-in Fashion-MNIST
    # keeps its own statistics): scaled to 0..1, then (x - mean) / std, one value for every channel
    # or one per channel. Unset: a timm teacher's own (its pretrained_cfg), else 0.5 and 0.5.
    # A teacher trained elsewhere needs the preprocessing it was trained with.
    mean: list[float] | None = None
    std: list[Positive] | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None  # unset: bilinear, or timm's
    # "squash": resize to the square size; "crop": shorter side to size / crop_fraction, then the
    # centre square (timm's and torchvision's evaluation transform)
    resize: Literal["squash", "crop"] = "squash"
    crop_fraction: Annotated[float, Field(gt=0, le=1)] | None = None  # unset: 0.875, or timm's

    @model_validator(mode="after")
    def _same_length(self) -> "DataConfig":
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"data.mean has {len(self.mean)} values and data.std {len(self.std)}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) not in (1, 3):
                raise ValueError(f"data.{name}: one value, or one per channel (3 for RGB)")
        return self


NonNegativeInt = Annotated[int, Field(ge=0)]


class TeacherConfig(Strict):
    arch: str = "edgekd_resnet_fc"
    width: Annotated[float, Field(gt=0, le=16)] = 1.0
    epochs: PositiveInt = 5
    min_steps: NonNegativeInt = 1200  # small data sets: at least this many optimizer steps
    lr: Positive = 0.3
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    # torch.compile the training step: faster per step after a one-off compile (~30 s on 2 cores),
    # so worth it for runs of several epochs; falls back to eager, saying so, where it cannot compile
    compile: bool = False


class TransferConfig(Strict):
    """Fine-tuning a pretrained teacher that does not know the user's classes (a new head):
    head first, as a linear probe on its frozen features, then the whole network."""

    # the probe: full-batch AdamW on features computed once; each weight decay is tried and the
    # one best on validation kept
    head_steps: PositiveInt = 300
    head_lr: Positive = 0.01
    head_weight_decays: list[Annotated[float, Field(ge=0)]] = [0.01, 0.1, 1.0, 3.0, 10.0]
    # then the whole network, from the probe's head, with the data's augmentations; validation
    # keeps the fine-tuned network only where it beats the probe (0 epochs: the probe alone)
    epochs: Annotated[int, Field(ge=0)] = 3
    lr: Positive = 0.01
    weight_decay: Annotated[float, Field(ge=0)] = 1e-5
    min_steps: Annotated[int, Field(ge=0)] = 0
    # BatchNorm keeps the pretrained statistics while the rest trains (edgekd.training.loop.TrainPlan)
    frozen_norm: bool = True


class StudentConfig(Strict):
    arch: str = "edgekd_cnn_fc"
    width: Annotated[float, Field(gt=0, le=16)] = 1.0
    # pretrained weights for a zoo student (a file; nothing is downloaded). A classifier for other
    # classes gets a new head, as for the teacher (edgekd.models.weights)
    weights: str | None = None


class HintConfig(Strict):
    """Feature distillation: match one teacher feature map through a learned 1x1 adapter."""

    teacher_layer: str
    student_layer: str
    weight: Positive = 1.0


class DKDConfig(Strict):
    """Decoupled KD (Zhao et al., CVPR 2022): KD split into its target-class part (TCKD: the
    binary "right class vs the rest" distribution) and its non-target part (NCKD: the
    distribution among the wrong classes), each with its own weight. Defaults are the paper's
    CIFAR-100 settings (mdistiller's configs): alpha 1, beta 8, T 4, cross-entropy weight 1,
    the DKD term ramped in linearly over the first 20 of 240 epochs. The paper's beta depends
    on the data (8 on CIFAR-100, 0.5 on ImageNet); choose it on a validation split."""

    alpha: Annotated[float, Field(ge=0)] = 1.0  # TCKD weight
    beta: Annotated[float, Field(ge=0)] = 8.0  # NCKD weight
    temperature: Positive = 4.0
    ce_weight: Annotated[float, Field(ge=0)] = 1.0  # weight of cross-entropy on the labels
    warmup: Fraction = 20 / 240  # share of the training over which the DKD term rises from 0 to full
    standardize: bool = False  # z-score both logits first (Sun et al. 2024): logit-standardised DKD


class LSKDConfig(Strict):
    """Logit-standardised KD (Sun et al., CVPR 2024): Hinton KD on z-scored logits, so the student
    matches the teacher's logit *ranking and relative gaps*, not their scale or shift. Defaults
    are the paper's CIFAR-100 settings (its repository's --base-temp 2 --kd-weight 9, with
    mdistiller's KD cross-entropy weight 0.1)."""

    temperature: Positive = 2.0  # base temperature, applied to the standardised logits
    weight: Annotated[float, Field(ge=0)] = 9.0  # weight of T^2 * KL(teacher || student)
    ce_weight: Annotated[float, Field(ge=0)] = 0.1  # weight of cross-entropy on the labels


DistillLoss = Literal["kd", "dkd", "lskd"]


class DistillConfig(Strict):
    epochs: PositiveInt = 3
    lr: Positive = 0.2
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    # The response (logit) loss: "kd" Hinton et al. 2015 (temperature, alpha below);
    # "dkd" decoupled KD ([distill.dkd]); "lskd" logit-standardised KD ([distill.lskd]).
    loss: DistillLoss = "kd"
    temperature: Positive = 4.0  # KD: softmax temperature
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.9  # KD: weight of the soft term; labels get 1 - alpha
    dkd: DKDConfig = DKDConfig()
    lskd: LSKDConfig = LSKDConfig()
    hint: HintConfig | None = None  # a feature term added to any of the three losses
    min_steps: NonNegativeInt = 800  # small data sets: at least this many optimizer steps
    compile: bool = False  # torch.compile the student's step and the teacher's forward (see [teacher])
    # BatchNorm keeps its running statistics while the student trains (edgekd.training.loop.TrainPlan): for
    # a pretrained student on a small data set. One epoch of lr 0.002 with batch statistics took a
    # pretrained Lite0 from its probe's 73.2% to 58.0% on the clip-art example's validation split
    frozen_norm: bool = False

    @model_validator(mode="after")
    def _settings_fit_the_loss(self):
        for name in ("dkd", "lskd"):
            if name in self.model_fields_set and self.loss != name:
                raise ValueError(f"[distill.{name}] is set but loss is '{self.loss}' (set loss = \"{name}\")")
        if self.loss != "kd" and self.model_fields_set & {"temperature", "alpha"}:
            raise ValueError(f"temperature and alpha are Hinton KD's; loss '{self.loss}' takes its own "
                             f"from [distill.{self.loss}]")
        return self


class PruneConfig(Strict):
    enabled: bool = True
    goal: Literal["ratio", "budget"] = "ratio"  # ratio: remove `ratio` (by channels or MACs); budget: prune
    #   step by step (NetAdapt) until the target's INT8 latency fits its budget less `margin`
    ratio: Fraction = 0.5  # share of prunable channels (or of MACs, with by = "macs") removed
    by: Literal["channels", "macs"] = "channels"
    margin: Fraction = 0.1  # budget goal: stay this fraction of the budget under it (0.1: at most 90%)
    max_steps: PositiveInt = 30  # budget goal: give up (exit 3) after this many prune-and-recover steps
    step_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.1  # budget goal: each per-layer candidate
    #   removes this share of its layer group's channels (at least `round_to`)
    candidate_samples: PositiveInt = 512  # budget goal: validation images that score each candidate
    importance: Literal["l1", "l2", "taylor", "group_norm", "random"] = "l2"
    sparse_epochs: Annotated[int, Field(ge=0)] = 1  # group_norm: regularised sparse training before pruning
    reg: Positive = 5e-4  # group_norm: the group-lasso coefficient (Torch-Pruning's GroupNormPruner `reg`)
    importance_samples: PositiveInt = 256  # taylor: a seeded, class-stratified batch of training images
    round_to: PositiveInt = 4  # channel counts stay multiples of this (8 suits most INT8 CPU kernels)
    global_pruning: bool = False
    steps: PositiveInt = 2  # iterative: prune a slice, recover, repeat
    epochs_per_step: PositiveInt = 1
    min_steps_per_step: NonNegativeInt = 200  # recovery after each pruning step, in optimizer steps
    lr: Positive = 0.05
    ignore: list[str] = []  # module names never pruned; the classifier always is ignored


class QuantizeConfig(Strict):
    enabled: bool = True
    method: Literal["qat", "ptq"] = "qat"
    calibration_samples: PositiveInt = 1024
    epochs: Annotated[int, Field(ge=0)] = 2  # QAT epochs; 0 (or method = "ptq") is post-training only
    min_steps: NonNegativeInt = 200  # small data sets: at least this many QAT steps
    lr: Positive = 0.002
    # QAT may train longer while the INT8 student is below the accuracy budget (validation): up to
    # this many extra epochs, at half the learning rate, each at least min_steps / 2 steps
    max_extra_epochs: NonNegativeInt = 2


class ExportConfig(Strict):
    opset: Annotated[int, Field(ge=13, le=21)] = 17
    atol: Positive = 1e-3  # max |logit difference| between PyTorch and ONNX Runtime (FP32)
    # ... or this share of the logits' range where larger: float32 rounding grows with the logits'
    # scale (a torchvision resnet18 after 2 epochs reached a range of 6000 and differed by 1.6e-7 of
    # it; one at 0.003 absolute failed a fixed 1e-3); a wrong export differs by far more than 1e-4
    rtol: Annotated[float, Field(ge=0, lt=1)] = 1e-4
    int8_atol: Positive = 0.25  # same for INT8: rounding in fused kernels differs from fake-quant
    # ... or this share of the logits' range where larger: INT8 rounding drift grows with the
    # logits' scale and the network's depth (1-4% on Lite0, edgekd.export.onnx_file.Parity)
    int8_rtol: Annotated[float, Field(ge=0, lt=1)] = 0.05
    # top-1 agreement needed on the images whose top-1 is not a near tie (within the tolerance)
    min_top1_agreement: Annotated[float, Field(gt=0, le=1)] = 0.98


class AccuracyConfig(Strict):
    """The accuracy budget: how far the student's top-1 may fall below the teacher's.

    Judged on the test split (docs/accuracy_verdict.md): MET exits 0, MISSED 3, NOT SHOWN 6."""

    max_drop: Annotated[float, Field(ge=0, le=100)] = 1.0  # points of top-1 (1.0 = one percentage point)
    # the verdict holds the *upper* confidence bound of the drop to max_drop: the student and the
    # teacher are compared image by image on the same test images (a paired bound), so a small
    # test split cannot pass a student whose loss it cannot rule out
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = 0.95
    # NOT SHOWN (the drop within the budget, the data unable to rule out more): exit 6 ("fail"),
    # or exit 0 with the NOT SHOWN line printed all the same ("pass")
    not_shown: Literal["fail", "pass"] = "fail"


class DetectConfig(Strict):
    """`edgekd compress --task detect`: the detection chain's own settings. Its pruning, INT8 and
    accuracy budget are the profile's [prune], [quantize] and [accuracy] sections, read in mAP
    points (docs/detection.md)."""

    image_size: Annotated[int, Field(ge=32, le=1024)] = 128  # square working size (a multiple of 32)
    synthetic_images: Annotated[int, Field(ge=30)] = 600  # the offline default set: images made (70/15/15)
    # or (train, val, test) images of it, each given: a larger test split decides the verdict with
    # the same training cost (docs/detection.md)
    synthetic_split: tuple[PositiveInt, PositiveInt, PositiveInt] | None = None
    metric: Literal["map50", "map"] = "map50"  # what [accuracy] max_drop is in: mAP@.5 or mAP@[.5:.95] points
    bad_boxes: Literal["error", "drop"] = "error"  # a user's bad box: a one-line error, or dropped and counted
    batch_size: PositiveInt = 16
    teacher_epochs: PositiveInt = 16
    teacher_lr: Positive = 0.05
    epochs: PositiveInt = 16  # distillation
    lr: Positive = 0.05
    feature_weight: Annotated[float, Field(ge=0)] = 1.0  # neck feature imitation (foreground-weighted)
    score_weight: Annotated[float, Field(ge=0)] = 1.0  # the teacher's class scores (quality focal loss)
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    # a carve of the training images for every choice (QAT kept or not, pruning undone) where the
    # data has no separate val/ and test/: the reported split is then the user's val/
    choice_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.15
    bootstrap_resamples: Annotated[int, Field(ge=50, le=10000)] = 400  # paired image bootstrap of the mAP drop

    @model_validator(mode="after")
    def _stride(self):
        if self.image_size % 32:
            raise ValueError(f"image_size {self.image_size} is not a multiple of 32 (the backbone's stride)")
        if self.synthetic_split is not None:
            if "synthetic_images" in self.model_fields_set and self.synthetic_images != sum(self.synthetic_split):
                raise ValueError(f"synthetic_images {self.synthetic_images} is not the sum of synthetic_split "
                                 f"{list(self.synthetic_split)}: set one of them")
        return self

    @property
    def images_made(self) -> int:
        """How many images the offline default set has."""
        return self.synthetic_images if self.synthetic_split is None else sum(self.synthetic_split)


class Profile(Strict):
    name: SafeName
    description: str = ""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0  # the training loop derives per-epoch seeds from it
    # bf16 autocast for training where the CPU or GPU has native bf16 units (AVX-512-BF16, AMX,
    # Ampere+); false trains in fp32 everywhere, so CPUs with and without bf16 compute alike
    mixed_precision: bool = True
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    transfer: TransferConfig = TransferConfig()
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    prune: PruneConfig = PruneConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    export: ExportConfig = ExportConfig()
    accuracy: AccuracyConfig = AccuracyConfig()
    detect: DetectConfig = DetectConfig()

    @property
    def arithmetic(self) -> tuple[str, ...]:
        """What cache keys and stage fingerprints add for this profile's arithmetic: fp32-only
        training computes other bits than bf16 autocast, so it never reuses their results."""
        return () if self.mixed_precision else ("fp32",)


# ---------------------------------------------------------------- loading


def _read_toml(path: Path, kind: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise BadInputError(f"cannot read {kind} file {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise BadInputError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                            f"TOML files are UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BadInputError(f"{path}: not valid TOML: {err}") from None


def _validation_message(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "missing":
        what = "missing required field"
    elif kind == "extra_forbidden":
        what = "unknown field"
    elif kind == "string_pattern_mismatch":
        what = (f"{first['input']!r} is not a safe name: use 1 to 64 of A-Z a-z 0-9 . _ - "
                "(starting with a letter or digit)")
    else:
        what = first["msg"][0].lower() + first["msg"][1:]
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{path}: field '{field}': {what}{more}"


def _known(directory: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(directory.glob("*.toml"))}


def _load(model, name_or_path: str, directory: Path, kind: str):
    path = _resolve(name_or_path, directory, kind)
    raw = _read_toml(path, kind)
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise BadInputError(_validation_message(path, err)) from None


def load_target(name_or_path: str) -> Target:
    """A target by name (targets/NAME.toml or an alias) or by path to a TOML file."""
    return _load(Target, name_or_path, TARGETS_DIR, "target")


def resolve_target_path(name_or_path: str) -> Path:
    """The TOML file a target name, alias or path stands for."""
    return _resolve(name_or_path, TARGETS_DIR, "target")


def load_profile(name_or_path: str) -> Profile:
    """A profile by name (profiles/NAME.toml) or by path to a TOML file."""
    return _load(Profile, name_or_path, PROFILES_DIR, "profile")


def _resolve(name_or_path: str, directory: Path, kind: str) -> Path:
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise BadInputError(f"{kind} file not found: {path}")
        return path
    known = _known(directory)
    if name_or_path in known:
        return known[name_or_path]
    if kind == "target":
        for path in known.values():
            aliases = tomllib.loads(path.read_text()).get("aliases", [])
            if name_or_path in aliases:
                return path
    names = ", ".join(known) or f"none in {directory}"
    raise BadInputError(f"unknown {kind} '{name_or_path}'; known: {names}")


def list_targets() -> list[Target]:
    return [load_target(str(p)) for p in _known(TARGETS_DIR).values()]


def list_profiles() -> list[Profile]:
    return [load_profile(str(p)) for p in _known(PROFILES_DIR).values()]


def fingerprint(*parts: object) -> str:
    """A stable content hash of configs and inputs: what decides whether a stage reruns."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, BaseModel):
            part = part.model_dump(mode="json")
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
