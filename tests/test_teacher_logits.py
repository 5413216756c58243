"""The teacher's logits, computed once per image and view, stand in for the online teacher exactly."""

import copy

import pytest
import torch

from edgekd.config import DistillConfig, HintConfig
from edgekd.data import limit
from edgekd.training.losses import CrossEntropyObjective, DistillationObjective
from edgekd.models import create_model
from edgekd.training.teacher_logits import TeacherLogits, apply_view, view_count
from edgekd.training.loop import TrainPlan, augment_with_views, fit


class CountingTeacher(torch.nn.Module):
    """A teacher that counts the images it is shown."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x):
        self.images += len(x)
        return self.model(x)


@pytest.fixture(scope="module")
def data(fashion):
    """512 training images (four batches an epoch): every count below is relative to them."""
    return limit(fashion, 512, 128)


@pytest.fixture(scope="module")
def trained_teacher(data):
    """Trained once for the module; each test counts the images shown to its own copy."""
    torch.manual_seed(0)
    model = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5)
    fit(model, CrossEntropyObjective(), data.train, TrainPlan(1, 0.2, 0, 128, 0), label="teacher")
    return model.eval()


@pytest.fixture
def teacher(trained_teacher):
    return CountingTeacher(copy.deepcopy(trained_teacher))


def _distil(teacher, data, augment, table=None, hint=None):
    torch.manual_seed(1)
    student = create_model("edgekd_cnn", 10, (1, 28, 28), 0.25)
    objective = DistillationObjective(teacher, DistillConfig(hint=hint), table).with_input_shape((1, 28, 28))
    log = fit(student, objective, data.train, TrainPlan(2, 0.1, 0, 128, 0, augment=augment), label="distill")
    return student, log


def test_view_numbers_name_the_view_each_image_got():
    x = torch.randn(64, 1, 8, 8)
    seen, view = augment_with_views(x, ("hflip",), torch.Generator().manual_seed(3))
    assert set(view.tolist()) == {0, 1}
    for i in range(len(x)):
        assert torch.equal(seen[i:i + 1], apply_view(x[i:i + 1], int(view[i]), ("hflip",)))
    assert view_count(()) == 1 and view_count(("hflip",)) == 2 and view_count(("hflip", "shift")) is None
    assert augment_with_views(x, ("shift",), torch.Generator())[1] is None


def test_distillation_from_the_table_matches_the_online_teacher_and_runs_it_once(teacher, data):
    online_student, online = _distil(teacher, data, ("hflip",))
    online_images = teacher.images
    assert online_images == 2 * len(data.train)  # two epochs, every image once each

    teacher.images = 0
    table = TeacherLogits(teacher, data.train, 10)
    student, log = _distil(teacher, data, ("hflip",), table)
    assert teacher.images == 2 * len(data.train)  # both views of every image, once, before training
    _distil(teacher, data, (), table)  # a stage without flips reads view 0 of the same table
    assert teacher.images == 2 * len(data.train)
    assert abs(log.epoch_losses[-1] - online.epoch_losses[-1]) < 1e-4 * abs(online.epoch_losses[-1])
    for mine, theirs in zip(student.state_dict().values(), online_student.state_dict().values()):
        assert torch.allclose(mine.float(), theirs.float(), atol=1e-4)


def test_random_shifts_and_hint_terms_keep_the_teacher_online(teacher, data):
    table = TeacherLogits(teacher, data.train, 10)
    _distil(teacher, data, ("shift",), table)
    assert teacher.images == 2 * len(data.train)  # every batch of both epochs, online
    hint = HintConfig(teacher_layer="model.features.2", student_layer="features.3")
    teacher.images = 0
    _distil(teacher, data, (), table, hint=hint)
    assert teacher.images >= 2 * len(data.train)


def test_a_split_too_large_for_the_memory_cap_keeps_the_teacher_online(teacher, data):
    table = TeacherLogits(teacher, data.train, 10, max_bytes=1000)
    _distil(teacher, data, (), table)
    assert teacher.images == 2 * len(data.train)
