"""Training objectives: labels alone (the teacher), or the teacher's softened outputs (distillation).

An objective is an `nn.Module` with two jobs: `trainable(student)` returns what the optimizer
trains and DDP wraps (the student, or the student plus a hint adapter), and `forward` turns
that module's output into a loss. The training loop knows nothing else about either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config import DistillConfig
from edgekd.errors import BadInputError


class CrossEntropyObjective(nn.Module):
    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def trainable(self, model: nn.Module) -> nn.Module:
        return model

    def forward(self, output, x, y):
        return F.cross_entropy(output.float(), y, label_smoothing=self.label_smoothing)


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """Hinton et al.: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)."""
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * temperature**2 * soft + (1 - alpha) * hard


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

    def __init__(self, teacher: nn.Module, config: DistillConfig):
        super().__init__()
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.temperature = config.temperature
        self.alpha = config.alpha
        self.hint = config.hint
        self.teacher_tap = _FeatureTap(find_module(teacher, self.hint.teacher_layer, "teacher")) if self.hint else None

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

    def forward(self, output, x, y):
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        if self.hint is None:
            return kd_loss(output, teacher_logits, y, self.temperature, self.alpha)
        logits, student_feature = output
        loss = kd_loss(logits, teacher_logits, y, self.temperature, self.alpha)
        target = self.teacher_tap.value
        if student_feature.shape[-2:] != target.shape[-2:]:
            student_feature = F.adaptive_avg_pool2d(student_feature, target.shape[-2:])
        return loss + self.hint.weight * F.mse_loss(student_feature.float(), target.float())
