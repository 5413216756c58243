"""The three response losses (`distill.loss = "kd" | "dkd" | "lskd"`): hand-checked values,
the identities the papers state, and each one training a real student."""

import math

import pytest
import torch
import torch.nn.functional as F

from edgekd.config import DistillConfig, DKDConfig, HintConfig, LSKDConfig, load_profile
from edgekd.errors import BadInputError
from edgekd.training.losses import (CrossEntropyObjective, DistillationObjective, dkd_loss, kd_divergence, lskd_loss,
                           standardize, tckd_nckd)
from edgekd.models import create_model
from edgekd.training.loop import TrainPlan, accuracy, fit


def test_tckd_and_nckd_by_hand():
    # teacher uniform over 3 classes; student softmax [1/5, 3/5, 1/5]; target class 0; T = 1
    s, t, y = torch.tensor([[0.0, math.log(3.0), 0.0]]), torch.zeros(1, 3), torch.tensor([0])
    tckd, nckd = tckd_nckd(s, t, y, temperature=1.0)
    # binary: teacher [1/3, 2/3], student [1/5, 4/5]; among the others: teacher [1/2, 1/2], student [3/4, 1/4]
    assert math.isclose(float(tckd), math.log(5 / 3) / 3 + 2 * math.log(5 / 6) / 3, rel_tol=1e-5)
    assert math.isclose(float(nckd), math.log(4 / 3) / 2, rel_tol=1e-5)
    # Zhao et al. eq. 4: KD = TCKD + (1 - p_target of the teacher) * NCKD; here KL = ln(125/81) / 3
    assert math.isclose(float(kd_divergence(s, t, 1.0)), math.log(125 / 81) / 3, rel_tol=1e-5)
    assert math.isclose(float(tckd + (2 / 3) * nckd), math.log(125 / 81) / 3, rel_tol=1e-5)


def test_kd_decomposes_into_tckd_and_nckd_at_any_temperature():
    torch.manual_seed(0)
    s, t, y = torch.randn(1, 10) * 3, torch.randn(1, 10) * 3, torch.tensor([4])
    for T in (1.0, 2.0, 4.0):
        tckd, nckd = tckd_nckd(s, t, y, T)
        p_target = float(F.softmax(t / T, 1)[0, 4])
        assert math.isclose(float(tckd + (1 - p_target) * nckd), float(kd_divergence(s, t, T)), rel_tol=1e-4)


def test_dkd_loss_weights_its_parts_and_ramps_in():
    torch.manual_seed(1)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    cfg = DKDConfig(alpha=1.0, beta=8.0, temperature=4.0, ce_weight=1.0)
    tckd, nckd = tckd_nckd(s, t, y, 4.0)
    ce = F.cross_entropy(s, y)
    assert math.isclose(float(dkd_loss(s, t, y, cfg)), float(ce + tckd + 8 * nckd), rel_tol=1e-5)
    assert math.isclose(float(dkd_loss(s, t, y, cfg, ramp=0.5)), float(ce + 0.5 * (tckd + 8 * nckd)), rel_tol=1e-5)
    assert math.isclose(float(dkd_loss(s, t, y, cfg, ramp=0.0)), float(ce), rel_tol=1e-6)
    # a student that copies the teacher has nothing left to learn from it
    assert float(sum(tckd_nckd(t, t, y, 4.0))) == pytest.approx(0.0, abs=1e-6)


def test_standardize_gives_zero_mean_unit_std_rows():
    z = standardize(torch.tensor([[1.0, 2.0, 3.0, 6.0], [-5.0, 0.0, 5.0, 10.0]]))
    assert torch.allclose(z.mean(1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(z.std(1), torch.ones(2), atol=1e-6)


def test_lskd_is_invariant_to_shifting_and_scaling_either_models_logits():
    torch.manual_seed(2)
    s, t, y = torch.randn(16, 10), torch.randn(16, 10) * 4, torch.randint(0, 10, (16,))
    cfg = LSKDConfig(temperature=2.0, weight=9.0, ce_weight=0.0)
    base = float(lskd_loss(s, t, y, cfg))
    assert base > 0.1
    for a, b, c, d in ((3.0, 5.0, 1.0, 0.0), (1.0, 0.0, 0.25, -7.0), (0.5, -2.0, 10.0, 3.0)):
        assert math.isclose(float(lskd_loss(a * s + b, c * t + d, y, cfg)), base, rel_tol=1e-4)
    # plain KD is not: a 4x sharper teacher is a different target
    assert not math.isclose(float(kd_divergence(s, 4 * t, 2.0)), float(kd_divergence(s, t, 2.0)), rel_tol=1e-2)


def test_lskd_cross_entropy_uses_the_raw_logits():
    s, t, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([1])
    cfg = LSKDConfig(temperature=2.0, weight=9.0, ce_weight=0.1)
    expected = 0.1 * -math.log(float(F.softmax(s, 1)[0, 1]))  # the KD part is 0: same logits
    assert math.isclose(float(lskd_loss(s, t, y, cfg)), expected, rel_tol=1e-5)


@pytest.fixture(scope="module")
def small_teacher(fashion_slice):
    torch.manual_seed(0)
    teacher = create_model("edgekd_resnet", 10, (1, 28, 28), 0.5)
    fit(teacher, CrossEntropyObjective(), fashion_slice.train,
        TrainPlan(epochs=2, lr=0.2, weight_decay=0, batch_size=64, seed=0), label="t")
    return teacher


@pytest.mark.parametrize("config", [
    DistillConfig(loss="dkd", dkd=DKDConfig(beta=2.0)),
    DistillConfig(loss="dkd", dkd=DKDConfig(standardize=True, temperature=2.0)),
    DistillConfig(loss="lskd"),
    DistillConfig(loss="dkd", dkd=DKDConfig(beta=2.0),
                  hint=HintConfig(teacher_layer="features.2", student_layer="features.3")),
], ids=["dkd", "ls-dkd", "lskd", "dkd+hint"])
def test_each_loss_trains_a_student_on_real_data(fashion_slice, small_teacher, config):
    torch.manual_seed(0)
    student = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5)
    objective = DistillationObjective(small_teacher, config).with_input_shape((1, 28, 28))
    log = fit(student, objective, fashion_slice.train,
              TrainPlan(epochs=2, lr=0.1, weight_decay=5e-4, batch_size=64, seed=0), label=config.loss)
    assert all(math.isfinite(v) for v in log.epoch_losses) and log.epoch_losses[1] < log.epoch_losses[0]
    assert accuracy(student, fashion_slice.test) > 0.5


def test_fit_reports_progress_so_dkd_warms_up(fashion_slice):
    teacher = create_model("edgekd_cnn", 10, (1, 28, 28), 0.25)
    seen = []

    class Recording(DistillationObjective):
        def set_progress(self, done):
            seen.append(done)
            super().set_progress(done)

    objective = Recording(teacher, DistillConfig(loss="dkd", dkd=DKDConfig(warmup=0.5)))
    student = create_model("edgekd_cnn", 10, (1, 28, 28), 0.25)
    fit(student, objective, fashion_slice.train, TrainPlan(2, 0.1, 0, 512, 0), label="s")
    steps = 2 * (len(fashion_slice.train) // 512)
    assert seen == [i / steps for i in range(steps)]


def _profile(tmp_path, distill: str) -> str:
    path = tmp_path / "p.toml"
    path.write_text(f'name = "p"\n[distill]\n{distill}\n')
    return str(path)


@pytest.mark.parametrize("distill, message", [
    ('loss = "dkdd"', "field 'distill.loss'"),
    ('loss = "kd"\n[distill.dkd]\nbeta = 2.0', "[distill.dkd] is set but loss is 'kd'"),
    ('loss = "dkd"\ntemperature = 3.0', "temperature and alpha are Hinton KD's"),
    ('loss = "dkd"\n[distill.dkd]\nbeta = -1.0', "field 'distill.dkd.beta'"),
    ('loss = "dkd"\n[distill.dkd]\nwarmup = 1.0', "field 'distill.dkd.warmup'"),
    ('loss = "lskd"\n[distill.lskd]\ntemperature = 0.0', "field 'distill.lskd.temperature'"),
])
def test_bad_loss_settings_are_one_line_errors(tmp_path, distill, message):
    with pytest.raises(BadInputError) as err:
        load_profile(_profile(tmp_path, distill))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_good_loss_settings_load(tmp_path):
    profile = load_profile(_profile(tmp_path, 'loss = "dkd"\n[distill.dkd]\nbeta = 2.0\nstandardize = true'))
    assert profile.distill.dkd == DKDConfig(beta=2.0, standardize=True)
    assert load_profile(_profile(tmp_path, 'loss = "lskd"')).distill.lskd == LSKDConfig()
