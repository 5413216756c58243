"""Run folders are data, never code: every checkpoint loads with torch.load(weights_only=True),
a pruned student comes back with its pruned shapes and the same outputs, and a run folder an
older edgekd wrote (pickled modules) is refused in one line."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from torch.utils.data import Subset

from edgekd import checkpoints
from edgekd.config import ActivationScheme, PruneConfig
from edgekd.errors import BadInputError
from edgekd.training.losses import CrossEntropyObjective
from edgekd.metrics import count
from edgekd.models import create_model
from edgekd.stages.prune import make_pruner
from edgekd.stages.quantize import quantize_with_nncf
from edgekd.training.loop import TrainPlan, fit
from tests.conftest import edgekd


def _pruned(test_images):
    torch.manual_seed(0)
    fresh = create_model("edgekd_cnn", 10, (1, 28, 28), 1.0).eval()
    model = copy.deepcopy(fresh)
    make_pruner(model, test_images, PruneConfig(ratio=0.5, steps=1), 10, 0.5, 1).step()
    return fresh, model.eval()


def test_a_pruned_student_round_trips_through_a_weights_only_checkpoint(test_images, tmp_path):
    fresh, pruned = _pruned(test_images)
    assert count(pruned, test_images)[0] < 0.6 * count(fresh, test_images)[0]
    path = tmp_path / "prune.pt"
    checkpoints.save_model(pruned, path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format"] == checkpoints.FORMAT
    assert payload["architecture"]["layers"]  # per-layer channel counts, plain ints
    assert all(isinstance(v, int) for sizes in payload["architecture"]["layers"].values() for v in sizes.values())
    loaded = checkpoints.load_model(path, like=fresh).eval()
    assert count(loaded, test_images) == count(pruned, test_images)
    with torch.no_grad():
        torch.testing.assert_close(loaded(test_images[:16]), pruned(test_images[:16]))
    assert count(fresh, test_images)[0] > count(loaded, test_images)[0]  # `like` is copied, not changed


def test_a_checkpoint_of_another_architecture_is_refused(test_images, tmp_path):
    _, pruned = _pruned(test_images)
    path = tmp_path / "prune.pt"
    checkpoints.save_model(pruned, path)
    with pytest.raises(BadInputError, match="is not in the student|the run's student is a"):
        checkpoints.load_model(path, like=create_model("edgekd_resnet", 10, (1, 28, 28)))


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "qat"])
def test_epoch_checkpoints_load_with_weights_only(fashion_slice, tmp_path, quantized):
    torch.manual_seed(0)
    model = create_model("edgekd_cnn", 10, (1, 28, 28), 0.25)
    data = Subset(fashion_slice.train, range(256))
    if quantized:
        model = quantize_with_nncf(model.eval(), data, 128, ActivationScheme.SYMMETRIC)
    path = tmp_path / "progress.pt"
    plan = TrainPlan(epochs=1, lr=0.01, weight_decay=0.0, batch_size=128, seed=0)
    fit(model, CrossEntropyObjective(), data, plan, label="test", checkpoint=path, fingerprint="fp")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["fingerprint"] == "fp" and state["epoch"] == 0 and state["trainable"]


def test_every_checkpoint_of_a_run_and_the_teacher_cache_loads_with_weights_only(smoke_run, cache_dir):
    run_dir, report, _ = smoke_run
    files = sorted(run_dir.rglob("*.pt")) + sorted(cache_dir.rglob("*.pt"))
    assert {p.name for p in run_dir.glob("checkpoints/*.pt")} == {"distill.pt", "prune.pt"}
    assert any(p.is_relative_to(cache_dir) for p in files)
    for path in files:
        assert isinstance(torch.load(path, map_location="cpu", weights_only=True), dict), path
    stages = {s["name"]: s for s in report["stages"]}
    for name in ("distill", "prune"):  # rebuilt with their pruned shapes, from tensors and JSON
        model = checkpoints.load_stage_model(run_dir, name)
        assert count(model, torch.zeros(1, 1, 28, 28)) == (stages[name]["macs"], stages[name]["params"])


def test_a_run_folder_from_an_older_edgekd_is_refused(smoke_run, cache_dir, tmp_path):
    source, _, _ = smoke_run
    old = tmp_path / "old-run"
    shutil.copytree(source, old)
    torch.save(create_model("edgekd_cnn", 10, (1, 28, 28)), old / "checkpoints" / "distill.pt")  # the old format
    done = edgekd("compress", "--resume", str(old), "--cache-dir", str(cache_dir))
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "distill.pt: written by an older edgekd as a pickled module" in lines[0]
    assert "Traceback" not in done.stderr
