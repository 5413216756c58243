"""Schedules that suit the data's size, augmentation from the profile, and the training device."""

import pytest
import torch

from edgekd.config import DataConfig, load_profile
from edgekd.data import DataBundle, augmentations
from edgekd.distributed import resolve_device
from edgekd.errors import BadInputError
from edgekd.training.losses import CrossEntropyObjective
from edgekd.models import create_model
from edgekd.training.loop import TrainPlan, augment, fit
from tests.conftest import edgekd


def test_a_small_data_set_gets_at_least_min_steps():
    plan = TrainPlan(epochs=2, lr=0.1, weight_decay=0, batch_size=256, seed=0, min_steps=100)
    assert plan.epochs_for(16) == 7  # 4,000 images at batch 256: 16 steps an epoch
    assert plan.epochs_for(211) == 2  # full Fashion-MNIST: the epochs already give 422 steps


def test_fit_runs_the_extra_epochs_it_needs(fashion_slice):
    small = torch.utils.data.Subset(fashion_slice.train, range(128))
    model = create_model("edgekd_cnn", 10, (1, 28, 28), 0.25)
    log = fit(model, CrossEntropyObjective(), small, TrainPlan(1, 0.05, 0, 64, 0, min_steps=5), label="t")
    assert len(log.epoch_losses) == 3  # 2 steps an epoch, at least 5 steps


def _floor_context(fashion_slice, floor: float, extra: int):
    from types import SimpleNamespace

    val = torch.utils.data.Subset(fashion_slice.test, range(128))
    smoke = load_profile("smoke")
    profile = smoke.model_copy(update={"quantize": smoke.quantize.model_copy(update={"max_extra_epochs": extra,
                                                                                    "min_steps": 0})})
    return SimpleNamespace(profile=profile, accuracy_floor=floor,
                           data=SimpleNamespace(val=val, train=torch.utils.data.Subset(fashion_slice.train, range(128))))


def test_qat_trains_longer_only_when_quantization_lost_the_accuracy(fashion_slice):
    from edgekd.stages.quantize import QuantizeStage

    model = create_model("edgekd_cnn", 10, (1, 28, 28), 0.25)
    plan = TrainPlan(1, 0.05, 0, 64, 0)
    # the FP32 parent already below the floor: an earlier stage lost it, no extra QAT epochs
    below = QuantizeStage()._train_to_the_floor(model, CrossEntropyObjective(), plan,
                                                _floor_context(fashion_slice, 0.99, 2), parent_val=0.5)
    assert below["extra_epochs"] == 0 and below["extension"].startswith("not extended")
    # the parent held the floor and the INT8 student fell below it: QAT trains on, up to the cap
    held = QuantizeStage()._train_to_the_floor(model, CrossEntropyObjective(), plan,
                                               _floor_context(fashion_slice, 0.99, 1), parent_val=0.995)
    assert held["extra_epochs"] == 1 and "extension" not in held


def test_default_augmentation_is_safe_for_unknown_images():
    fashion = DataBundle("fashion-mnist", None, None, ["a", "b"], (1, 28, 28), default_augment=("hflip",))
    folder = DataBundle("imagefolder:x", None, None, ["a", "b"], (1, 28, 28))
    assert augmentations(DataConfig(), folder) == ("shift",)  # no flips for digits, text, signs
    assert augmentations(DataConfig(), fashion) == ("hflip",)
    assert augmentations(DataConfig(augment=[]), fashion) == ()
    assert augmentations(DataConfig(augment=["shift", "hflip"]), folder) == ("shift", "hflip")


def test_unknown_augmentation_is_refused(tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text('name = "p"\n[data]\naugment = ["rotate"]\n')
    with pytest.raises(BadInputError, match="augment"):
        load_profile(str(profile))


def test_shift_moves_whole_pixels_and_keeps_the_edges():
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    shifted = augment(x, ("shift",), torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and torch.all(shifted.sum((1, 2, 3)) == 1.0)  # nearest: no blur, no loss
    positions = {tuple(torch.nonzero(img[0])[0].tolist()) for img in shifted}
    assert len(positions) > 10 and all(abs(r - 8) <= 2 and abs(c - 8) <= 2 for r, c in positions)
    flipped = augment(x, ("hflip",), torch.Generator().manual_seed(0))
    assert {tuple(torch.nonzero(img[0])[0].tolist()) for img in flipped} == {(8, 8), (8, 7)}


def test_device_resolution_on_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    with pytest.raises(BadInputError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BadInputError, match="no CUDA device"):
            resolve_device("cuda:0")


def test_asking_for_a_gpu_that_is_not_here_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = edgekd("compress", "--profile", "smoke", "--device", "cuda", "--run-dir", str(tmp_path / "r"))
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "no CUDA device" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_smoke_pipeline_trains_on_the_gpu(tmp_path, cache_dir):
    import json

    done = edgekd("compress", "--profile", "smoke", "--target", "host-cpu", "--device", "cuda",
                  "--run-dir", str(tmp_path / "r"), "--cache-dir", str(cache_dir))
    assert done.returncode in (0, 3, 6), done.stderr[-2000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["training"]["device"].startswith("cuda")


def _distill_losses(fashion_slice, compile: bool) -> list[float]:
    from edgekd.config import DistillConfig
    from edgekd.training.losses import DistillationObjective

    torch.manual_seed(0)
    teacher = create_model("edgekd_resnet", 10, (1, 28, 28), 0.25).eval()
    student = create_model("edgekd_cnn", 10, (1, 28, 28), 0.25)
    objective = DistillationObjective(teacher, DistillConfig())
    small = torch.utils.data.Subset(fashion_slice.train, range(256))
    plan = TrainPlan(2, 0.05, 0, 64, 0, augment=("shift",), compile=compile)
    return fit(student, objective, small, plan, label="distill").epoch_losses


def test_compiled_distillation_trains_like_eager(fashion_slice):
    # `compile = true`: the student's step and the teacher's forward go through torch.compile
    eager, compiled = _distill_losses(fashion_slice, False), _distill_losses(fashion_slice, True)
    assert compiled[-1] < compiled[0]
    assert compiled == pytest.approx(eager, rel=1e-3)


def test_a_compiler_that_fails_falls_back_to_eager(fashion_slice, monkeypatch, capsys):
    def broken(module, **_):
        def call(*args):
            raise RuntimeError("InductorError: no working C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.delenv("EDGEKD_QUIET", raising=False)
    assert _distill_losses(fashion_slice, True) == _distill_losses(fashion_slice, False)
    said = " ".join(capsys.readouterr().err.split())  # rich wraps lines at the terminal's width
    assert "distill: torch.compile failed (InductorError: no working C++ compiler); training without it" in said
