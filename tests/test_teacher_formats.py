"""Every documented teacher format runs the whole pipeline (teacher -> distill -> prune -> QAT ->
export -> verify): an edgekd checkpoint, a bare state dict with --teacher-arch, TorchScript,
torch.export (.pt2), and a torchvision architecture name with --teacher-weights.

A small RGB ImageFolder (real PNG files) and a one-epoch profile keep each run to seconds."""

from __future__ import annotations

import json

import pytest
import torch

from edgekd.config import PROFILES_DIR, load_profile
from edgekd.data import load_data
from edgekd.models import ModelSpec, save_checkpoint
from edgekd.training.loop import accuracy
from tests.conftest import edgekd

SIZE = 16
PROFILE = (PROFILES_DIR / "smoke.toml").read_text()
for old, new in (('name = "smoke"', 'name = "teacher-formats"'), ("train_limit = 4096", "train_limit = 96"),
                 ("test_limit = 1024", "test_limit = 48"), ("batch_size = 128", "batch_size = 16"),
                 ("epochs = 2\nlr = 0.2\ntemperature", "epochs = 1\nlr = 0.2\ntemperature"),
                 ("calibration_samples = 256", "calibration_samples = 32")):
    assert old in PROFILE, old
    PROFILE = PROFILE.replace(old, new)


@pytest.fixture(scope="module")
def setting(tmp_path_factory) -> dict:
    """Three colour classes as PNG files, the profile, and one teacher saved in every format."""
    from PIL import Image

    root = tmp_path_factory.mktemp("teachers")
    generator = torch.Generator().manual_seed(0)
    for label, colour in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
        for i in range(40):
            noise = torch.randint(-40, 40, (SIZE, SIZE, 3), generator=generator)
            pixels = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
            path = root / "data" / f"class{label}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="RGB").save(path)
    (root / "profile.toml").write_text(PROFILE)
    spec = ModelSpec("edgekd_cnn", 3, (3, SIZE, SIZE), 1.0)
    torch.manual_seed(0)
    model = spec.build().eval()
    save_checkpoint(model, spec, root / "teacher.pt")
    torch.save(model.state_dict(), root / "state_dict.pt")
    torch.jit.script(model).save(str(root / "teacher.ts"))
    example = torch.zeros(2, 3, SIZE, SIZE)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}),
                      str(root / "teacher.pt2"))
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.get_model("shufflenet_v2_x0_5", weights=None, num_classes=3).state_dict(),
               root / "shufflenet.pt")
    data = load_data(str(root / "data"), load_profile(str(root / "profile.toml")).data, SIZE, 0)
    return {"root": root, "model": model, "data": data}


FORMATS = {
    "edgekd checkpoint": lambda r: ["--teacher", str(r / "teacher.pt")],
    "state dict + --teacher-arch": lambda r: ["--teacher", str(r / "state_dict.pt"), "--teacher-arch", "edgekd_cnn"],
    "TorchScript": lambda r: ["--teacher", str(r / "teacher.ts"), "--trust-torchscript"],
    "torch.export (.pt2)": lambda r: ["--teacher", str(r / "teacher.pt2")],
    "torchvision name + --teacher-weights": lambda r: ["--teacher", "shufflenet_v2_x0_5",
                                                       "--teacher-weights", str(r / "shufflenet.pt")],
}


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMATS)
def test_every_teacher_format_runs_the_whole_pipeline(form, setting, tmp_path, cache_dir):
    root = setting["root"]
    run_dir = tmp_path / "run"
    done = edgekd("compress", "--data", str(root / "data"), "--image-size", str(SIZE), "--profile",
                  str(root / "profile.toml"), "--target", "mobile-cpu", "--run-dir", str(run_dir),
                  "--cache-dir", str(cache_dir), *FORMATS[form](root))
    assert done.returncode in (0, 3, 6), done.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "complete"
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["teacher", "distill", "prune", "quantize"]
    teacher = stages["teacher"]
    assert teacher["macs"] > 0 and teacher["params"] > 0
    assert teacher["details"]["parity"]["max_abs_diff"] <= teacher["details"]["parity"]["atol"]
    assert (run_dir / report["artifacts"]["student_int8_onnx"]).is_file()
    if form != "torchvision name + --teacher-weights":  # the same weights in four files: the same teacher
        model = setting["model"]
        assert teacher["params"] == sum(p.numel() for p in model.parameters())
        # measured on the exported file, so within one image of PyTorch's own top-1
        assert teacher["accuracy"] == pytest.approx(accuracy(model, setting["data"].test),
                                                    abs=1.01 / len(setting["data"].test))
