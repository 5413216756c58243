"""The field's models by name, built exactly as their libraries build them: a plain torchvision
teacher a user trained and saved as a state dict runs end to end; timm models take any channel
count; edgekd's own small-input variants have edgekd_ names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from edgekd.errors import BadInputError
from edgekd.models import ModelSpec, canonical_arch, create_model
from edgekd.testing import write_image_folder
from tests.conftest import REPO, edgekd


def test_a_plain_name_is_the_library_model_exactly():
    import torchvision

    ours, theirs = create_model("resnet18", 6, (3, 64, 64)), torchvision.models.resnet18(num_classes=6)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.conv1.kernel_size == (7, 7) and isinstance(ours.maxpool, torch.nn.MaxPool2d)
    assert canonical_arch("resnet18") == "torchvision:resnet18"
    # edgekd's small-input variant has its own name: a 3x3 stem, no max-pool, any channel count
    small = create_model("edgekd_resnet18", 10, (1, 28, 28))
    assert small.conv1.kernel_size == (3, 3) and small.conv1.in_channels == 1


def test_timm_models_by_name_take_any_channel_count():
    pytest.importorskip("timm")
    model = create_model("timm:mobilenetv3_small_100", 5, (1, 32, 32)).eval()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 5)
    assert canonical_arch("efficientnet_lite0") == "timm:efficientnet_lite0"  # torchvision has none


@pytest.mark.parametrize("arch, shape, width, says", [
    ("resnet18", (1, 28, 28), 1.0, "takes RGB images (3 channels); the data has 1"),
    ("resnet18", (3, 64, 64), 0.5, "--width applies to edgekd's own models only"),
    ("no_such_net", (3, 64, 64), 1.0, "unknown architecture 'no_such_net'"),
])
def test_a_zoo_model_that_cannot_be_built_is_one_line(arch, shape, width, says):
    with pytest.raises(BadInputError, match=says.replace("(", r"\(").replace(")", r"\)")):
        create_model(arch, 10, shape, width)


def test_checkpoints_from_before_the_rename_still_rebuild():
    spec = ModelSpec.from_payload({"arch": "resnet18", "num_classes": 10, "input_shape": [1, 28, 28], "width": 0.25})
    assert spec.arch == "edgekd_resnet18" and spec.build().conv1.in_channels == 1


def test_a_torchvision_teacher_saved_as_a_state_dict_runs_end_to_end(tmp_path, cache_dir):
    """The reported failure: torchvision's own resnet18(num_classes=3), trained in plain PyTorch on
    64-px RGB images and saved as a state dict, handed over by name."""
    data = write_image_folder(tmp_path / "data", 240, rgb=True, classes=3, size=64)
    script = f"""
import torch, torchvision
from pathlib import Path
from edgekd.config import DataConfig
from edgekd.data import load_image_folder

bundle = load_image_folder(Path({str(data)!r}), DataConfig(), image_size=64, seed=0)
model = torchvision.models.resnet18(num_classes=3)
optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
loader = torch.utils.data.DataLoader(bundle.train, batch_size=32, shuffle=True)
model.train()
for epoch in range(2):
    for x, y in loader:
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
torch.save(model.state_dict(), {str(tmp_path / "resnet18.pt")!r})
"""
    trained = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert trained.returncode == 0, trained.stderr[-2000:]
    run_dir = tmp_path / "run"
    done = edgekd("compress", "--profile", "smoke", "--target", "host-cpu", "--data", str(data), "--image-size", "64",
                  "--teacher", "resnet18", "--teacher-weights", str(tmp_path / "resnet18.pt"),
                  "--student", "edgekd_cnn", "--run-dir", str(run_dir), "--cache-dir", str(cache_dir), timeout=1500)
    assert done.returncode in (0, 3, 6), done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    teacher = report["stages"][0]
    assert report["dataset"]["input_shape"] == [3, 64, 64]
    assert teacher["params"] == sum(p.numel() for p in create_model("resnet18", 3, (3, 64, 64)).parameters())
    assert (run_dir / "student.int8.onnx").is_file()
