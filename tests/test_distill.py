import math

import torch
import torch.nn.functional as F

from edgekd.config import DistillConfig, HintConfig
from edgekd.training.losses import CrossEntropyObjective, DistillationObjective, HintStudent, kd_loss
from edgekd.models import create_model
from edgekd.training.loop import TrainPlan, accuracy, fit


def test_kd_loss_is_hintons_formula():
    s, t = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    y = torch.tensor([0])
    T, alpha = 3.0, 0.7
    p_t, p_s = F.softmax(t / T, 1), F.softmax(s / T, 1)
    kl = float((p_t * (p_t.log() - p_s.log())).sum())
    ce = -math.log(float(F.softmax(s, 1)[0, 0]))
    assert math.isclose(float(kd_loss(s, t, y, T, alpha)), alpha * T * T * kl + (1 - alpha) * ce, rel_tol=1e-5)


def test_distillation_trains_a_student_on_real_data_and_is_seeded(fashion_slice):
    teacher = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5)
    fit(teacher, CrossEntropyObjective(), fashion_slice.train,
        TrainPlan(epochs=3, lr=0.2, weight_decay=0, batch_size=64, seed=0), label="t")
    assert accuracy(teacher, fashion_slice.test) > 0.6
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        student = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5)
        objective = DistillationObjective(teacher, DistillConfig(temperature=4, alpha=0.7))
        log = fit(student, objective, fashion_slice.train,
                  TrainPlan(epochs=2, lr=0.2, weight_decay=5e-4, batch_size=64, seed=0), label="s")
        runs.append((log.epoch_losses, accuracy(student, fashion_slice.test)))
    assert runs[0] == runs[1], "same command and seed must give the same model"
    losses, acc = runs[0]
    assert losses[1] < losses[0] and acc > 0.5


def test_teacher_stays_frozen_and_in_eval_mode(fashion_slice):
    teacher = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = create_model("edgekd_cnn", 10, (1, 28, 28), 0.25)
    objective = DistillationObjective(teacher, DistillConfig())
    fit(student, objective, fashion_slice.train, TrainPlan(1, 0.1, 0, 256, 0), label="s")
    assert not teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_hint_term_trains_through_a_1x1_adapter(fashion_slice):
    teacher = create_model("edgekd_resnet", 10, (1, 28, 28), 0.5)
    student = create_model("edgekd_cnn", 10, (1, 28, 28), 0.25)
    config = DistillConfig(hint=HintConfig(teacher_layer="features.2", student_layer="features.3"))
    objective = DistillationObjective(teacher, config).with_input_shape((1, 28, 28))
    trainable = objective.trainable(student)
    assert isinstance(trainable, HintStudent)
    assert trainable.adapter.in_channels == 16 and trainable.adapter.out_channels == 48
    log = fit(student, objective, fashion_slice.train, TrainPlan(1, 0.1, 0, 256, 0), label="hint")
    assert math.isfinite(log.epoch_losses[0])
