"""Training objectives: labels alone (the teacher), or the teacher's softened outputs (distillation).

An objective is an `nn.Module` with two jobs: `trainable(student)` returns what the optimizer
trains and DDP wraps (the student, or the student plus a hint adapter), and `forward` turns
that module's output into a loss. The training loop knows nothing else about either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config import DistillConfig, DKDConfig, LSKDConfig
from edgekd.errors import BadInputError

if TYPE_CHECKING:
    from edgekd.training.teacher_logits import TeacherLogits


class CrossEntropyObjective(nn.Module):
    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def trainable(self, model: nn.Module) -> nn.Module:
        return model

    def forward(self, output, x, y, teacher_logits=None):
        return F.cross_entropy(output.float(), y, label_smoothing=self.label_smoothing)


def kd_divergence(student_logits, teacher_logits, temperature: float):
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch."""
    return temperature**2 * F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """Hinton et al.: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)."""
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    soft = kd_divergence(student_logits, teacher_logits, temperature)
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each row z-scored: (z - mean) / std (Sun et al. 2024; sample std, as their code)."""
    return (logits - logits.mean(dim=1, keepdim=True)) / (eps + logits.std(dim=1, keepdim=True))


def _binary_and_rest(logits, labels, temperature: float):
    """log [p_target, 1 - p_target] and the log-softmax among the non-target classes, at T."""
    z = logits / temperature
    target = z.gather(1, labels[:, None])
    others = z[torch.ones_like(z, dtype=torch.bool).scatter_(1, labels[:, None], False)].view(z.shape[0], -1)
    binary = torch.cat([target, others.logsumexp(1, keepdim=True)], dim=1)
    return binary.log_softmax(1), others.log_softmax(1)


def tckd_nckd(student_logits, teacher_logits, labels, temperature: float):
    """DKD's two parts, each T^2 * KL(teacher || student) averaged over the batch:
    TCKD over the binary (target, non-target) distribution, NCKD over the non-target classes.
    Hinton KD = TCKD + (1 - p_target of the teacher) * NCKD, per sample (Zhao et al., eq. 1-4)."""
    s_binary, s_rest = _binary_and_rest(student_logits, labels, temperature)
    t_binary, t_rest = _binary_and_rest(teacher_logits, labels, temperature)

    def kl(s, t):
        return temperature**2 * F.kl_div(s, t, reduction="batchmean", log_target=True)

    return kl(s_binary, t_binary), kl(s_rest, t_rest)


def dkd_loss(student_logits, teacher_logits, labels, config: DKDConfig, ramp: float = 1.0):
    """Zhao et al.: ce_weight * CE(s, y) + ramp * (alpha * TCKD + beta * NCKD); `ramp` is the warm-up."""
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    hard = F.cross_entropy(student_logits, labels)
    if config.standardize:
        student_logits, teacher_logits = standardize(student_logits), standardize(teacher_logits)
    tckd, nckd = tckd_nckd(student_logits, teacher_logits, labels, config.temperature)
    return config.ce_weight * hard + ramp * (config.alpha * tckd + config.beta * nckd)


def lskd_loss(student_logits, teacher_logits, labels, config: LSKDConfig):
    """Sun et al.: ce_weight * CE(s, y) + weight * T^2 * KL on the z-scored logits (CE on the raw ones)."""
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    soft = kd_divergence(standardize(student_logits), standardize(teacher_logits), config.temperature)
    return config.ce_weight * F.cross_entropy(student_logits, labels) + config.weight * soft


def find_module(model: nn.Module, name: str, who: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        sample = ", ".join(n for n in list(modules)[1:12] if n)
        raise BadInputError(f"hint layer '{name}' not found in the {who} (some of its layers: {sample}, ...)")
    return modules[name]


class _FeatureTap:
    """Keeps the output of one module from the last forward pass."""

    def __init__(self, module: nn.Module):
        self.value = None
        self._handle = module.register_forward_hook(self._keep)

    def _keep(self, _module, _inputs, output):
        self.value = output

    def remove(self) -> None:
        """Detach the hook: a model left with it cannot be deep-copied, pickled or exported cleanly."""
        self._handle.remove()
        self.value = None


class HintStudent(nn.Module):
    """The student plus a learned 1x1 adapter from its tapped feature map to the teacher's width."""

    def __init__(self, student: nn.Module, layer: str, adapter: nn.Conv2d):
        super().__init__()
        self.student = student
        self.adapter = adapter
        self.tap = _FeatureTap(find_module(student, layer, "student"))

    def forward(self, x):
        logits = self.student(x)
        return logits, self.adapter(self.tap.value)

    def close(self) -> None:
        self.tap.remove()


class DistillationObjective(nn.Module):
    """Response distillation from a frozen teacher, with an optional feature (hint) term."""

    def __init__(self, teacher: nn.Module, config: DistillConfig, logits: "TeacherLogits | None" = None):
        super().__init__()
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.config = config
        self.hint = config.hint
        self.progress = 1.0  # share of this training done; `fit` updates it (DKD's warm-up reads it)
        self.teacher_tap = _FeatureTap(find_module(teacher, self.hint.teacher_layer, "teacher")) if self.hint else None
        self._compiled_teacher = None
        # the teacher's logits computed once per image and view (`fit` reads them where they serve its
        # split and augmentation); a hint term needs the teacher's features, so it runs the teacher
        self.teacher_logits = logits if self.hint is None else None

    def compile_teacher(self, label: str) -> None:
        """Run the frozen teacher through torch.compile (it is most of a distillation step's cost).
        Not with a hint term: that reads the teacher's features through a forward hook."""
        from edgekd.training.loop import CompiledOrEager

        if self.hint is None:
            self._compiled_teacher = CompiledOrEager(self.teacher, f"{label} (teacher)")

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: BatchNorm statistics and dropout stay in inference mode
        return self

    def trainable(self, student: nn.Module) -> nn.Module:
        if self.hint is None:
            return student
        tap = _FeatureTap(find_module(student, self.hint.student_layer, "student"))
        shape = next(student.parameters())
        with torch.no_grad():
            probe = torch.zeros(1, *self._input_shape, device=shape.device)
            was_training = student.training
            student.eval()
            student(probe)
            self.teacher(probe.to(next(self.teacher.parameters()).device))
            student.train(was_training)
        s_channels, t_channels = tap.value.shape[1], self.teacher_tap.value.shape[1]
        tap.remove()
        return HintStudent(student, self.hint.student_layer, nn.Conv2d(s_channels, t_channels, 1))

    _input_shape: tuple[int, int, int] = (1, 28, 28)

    def with_input_shape(self, shape: tuple[int, int, int]) -> "DistillationObjective":
        self._input_shape = tuple(shape)
        return self

    def close(self) -> None:
        if self.teacher_tap is not None:
            self.teacher_tap.remove()

    def set_progress(self, done: float) -> None:
        self.progress = done

    def response(self, logits, teacher_logits, y):
        """The logit loss the profile chose (`distill.loss`)."""
        cfg = self.config
        if cfg.loss == "dkd":
            ramp = min(1.0, self.progress / cfg.dkd.warmup) if cfg.dkd.warmup > 0 else 1.0
            return dkd_loss(logits, teacher_logits, y, cfg.dkd, ramp)
        if cfg.loss == "lskd":
            return lskd_loss(logits, teacher_logits, y, cfg.lskd)
        return kd_loss(logits, teacher_logits, y, cfg.temperature, cfg.alpha)

    def forward(self, output, x, y, teacher_logits=None):
        if teacher_logits is None:
            with torch.no_grad():
                teacher_logits = (self._compiled_teacher or self.teacher)(x)
        if self.hint is None:
            return self.response(output, teacher_logits, y)
        logits, student_feature = output
        loss = self.response(logits, teacher_logits, y)
        target = self.teacher_tap.value
        if student_feature.shape[-2:] != target.shape[-2:]:
            student_feature = F.adaptive_avg_pool2d(student_feature, target.shape[-2:])
        return loss + self.hint.weight * F.mse_loss(student_feature.float(), target.float())
