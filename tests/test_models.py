import pytest
import torch

from edgekd.errors import BadInputError
from edgekd.models import ModelSpec, create_model, known_architectures, load_teacher, save_checkpoint


@pytest.mark.parametrize("arch", known_architectures())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_architecture_fits_the_input_and_classes(arch, shape):
    model = create_model(arch, 7, shape, width=0.5).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, 7)


def test_width_multiplier_changes_the_size():
    small = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5)
    large = create_model("edgekd_cnn", 10, (1, 28, 28), 2.0)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(large) > 4 * count(small)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(BadInputError, match="known: .*edgekd_cnn"):
        create_model("vgg99", 10, (1, 28, 28))


def test_edgekd_checkpoint_round_trip(tmp_path):
    spec = ModelSpec("edgekd_cnn", 10, (1, 28, 28), 0.5)
    model = spec.build().eval()
    save_checkpoint(model, spec, tmp_path / "t.pt")
    loaded, loaded_spec = load_teacher(str(tmp_path / "t.pt"), 10, (1, 28, 28))
    x = torch.randn(3, 1, 28, 28)
    assert loaded_spec == spec and torch.equal(loaded.eval()(x), model(x))


def test_torchscript_teacher(tmp_path):
    model = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5).eval()
    torch.jit.script(model).save(str(tmp_path / "t.ts"))
    loaded, spec = load_teacher(str(tmp_path / "t.ts"), 10, (1, 28, 28), trust_torchscript=True)
    x = torch.randn(2, 1, 28, 28)
    assert spec is None and torch.allclose(loaded(x), model(x))


def test_state_dict_of_another_architecture_is_refused(tmp_path):
    torch.save(create_model("edgekd_resnet18", 10, (1, 28, 28), 0.25).state_dict(), tmp_path / "r.pt")
    with pytest.raises(BadInputError, match="does not fit the architecture"):
        load_teacher(str(tmp_path / "r.pt"), 10, (1, 28, 28), arch="edgekd_cnn")
