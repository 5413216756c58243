"""One test template for every runtime's Runner (edgekd.runtimes.base): each runner loads the
same small ONNX student, runs a batch, makes a deterministic example input and times itself.

Subclasses only say how to build their runner. ONNX Runtime runs everywhere; the TensorRT
instance needs TensorRT and a CUDA GPU and is skipped elsewhere with tensorrt_available()'s reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekd.models import create_model
from edgekd.export.onnx_file import export_onnx
from edgekd.runtimes.base import Runner


@pytest.fixture(scope="module")
def student_onnx(test_images, tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5).eval()
    path = tmp_path_factory.mktemp("runner") / "student.onnx"
    return export_onnx(model, test_images[:8], path)


class RunnerTemplate:
    """Subclass and implement `make(student_onnx, tmp_path)` -> Runner."""

    batch = 4

    def make(self, student_onnx, tmp_path) -> Runner:
        raise NotImplementedError

    def test_is_a_runner_that_names_its_file_and_runtime(self, student_onnx, tmp_path):
        runner = self.make(student_onnx, tmp_path)
        assert isinstance(runner, Runner)
        assert runner.path.is_file()
        assert runner.description

    def test_example_input_is_deterministic_and_shaped(self, student_onnx, tmp_path):
        runner = self.make(student_onnx, tmp_path)
        a, b = runner.example_input(self.batch), runner.example_input(self.batch)
        assert a.shape == (self.batch, 1, 28, 28)
        np.testing.assert_array_equal(a, b)

    def test_run_gives_one_logit_row_per_image(self, student_onnx, tmp_path, test_images):
        runner = self.make(student_onnx, tmp_path)
        logits = runner.run(test_images[: self.batch].numpy())
        assert logits.shape == (self.batch, 10)
        assert np.isfinite(logits).all()

    def test_measure_times_the_requested_batch(self, student_onnx, tmp_path):
        runner = self.make(student_onnx, tmp_path)
        latency = runner.measure(self.batch, label="template", warmup=2, min_runs=10, max_runs=20)
        assert latency.source == "measured" and latency.batch == self.batch
        assert latency.runtime == runner.description
        assert 10 <= latency.runs <= 20
        assert 0 < latency.p50 <= latency.p90 <= latency.p99


class TestOnnxRuntimeRunner(RunnerTemplate):
    def make(self, student_onnx, tmp_path):
        from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(student_onnx, threads=1)


@pytest.mark.tensorrt
class TestTensorRTRunner(RunnerTemplate):
    def make(self, student_onnx, tmp_path):
        from edgekd.runtimes.tensorrt import TensorRTRunner, build_engine, tensorrt_available
        from edgekd.config import load_target

        available, why = tensorrt_available()
        if not available:
            pytest.skip(f"TensorRT runner not tested here: {why}")
        engine = tmp_path / "student.engine"
        build_engine(student_onnx, engine, load_target("server-gpu"), workspace_mb=256)
        return TensorRTRunner(engine)


class TestOpenVinoRunner(RunnerTemplate):
    def make(self, student_onnx, tmp_path):
        from edgekd.runtimes.openvino import OpenVinoRunner, openvino_available

        available, why = openvino_available()
        if not available:
            pytest.skip(f"OpenVINO runner not tested here: {why}")
        return OpenVinoRunner(student_onnx, threads=1)


class TestOpenVinoIrRunner(RunnerTemplate):
    """The same runner on the OpenVINO IR (.xml + .bin) that a run writes for OpenVINO targets."""

    def make(self, student_onnx, tmp_path):
        from edgekd.runtimes.openvino import OpenVinoRunner, openvino_available

        available, why = openvino_available()
        if not available:
            pytest.skip(f"OpenVINO runner not tested here: {why}")
        from edgekd.export.openvino_ir import export_openvino_ir

        xml, _ = export_openvino_ir(student_onnx, tmp_path / "student.xml")
        return OpenVinoRunner(xml, threads=1)


def test_every_runtime_a_target_can_name_has_one_backend():
    """The registry: each shipped target's runtime is looked up, never asked about by name."""
    from edgekd.config import TARGETS_DIR, Runtime, load_target
    from edgekd.runtimes import BACKENDS, backend

    assert set(BACKENDS) == set(Runtime)
    for path in TARGETS_DIR.glob("*.toml"):
        target = load_target(path.stem)
        assert backend(target).runtime is target.runtime
    assert backend(load_target("host-cpu")).available() == (True, "")


@pytest.mark.parametrize("runtime", ["onnxruntime-cpu", "openvino-cpu"])
def test_a_backend_profiles_layers_with_its_own_profiler(runtime, student_onnx):
    """ONNX Runtime's nodes from its profiler; OpenVINO's fused layers from its performance
    counters (skipped where openvino is not installed): a report never labels one as the other."""
    from edgekd.config import Runtime
    from edgekd.runtimes import BACKENDS

    runtime_backend = BACKENDS[Runtime(runtime)]
    available, why = runtime_backend.available()
    if not available:
        pytest.skip(why)
    rows = runtime_backend.profile_layers(student_onnx, 1, 1)
    assert rows and all(r["ms"] >= 0 for r in rows)
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    assert any(r["op"] in ("Conv", "Convolution", "FusedConv") for r in rows)


def test_two_files_are_timed_side_by_side_in_rotated_rounds(student_onnx, tmp_path):
    """One interleaved loop for every side-by-side timing (which file ships, which layers stay
    float, the benchmarks): each file at each batch gets its own Latency, pooled over the rounds."""
    from edgekd.measure.latency import measure_runners_side_by_side
    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner, measure_side_by_side

    timing = {"warmup": 1, "min_runs": 5, "max_runs": 5, "max_seconds": 5.0}
    both = measure_side_by_side({"a": student_onnx, "b": student_onnx}, 1, (1, 4), timing, rounds=2)
    assert set(both) == {"a", "b"} and all(set(by_batch) == {1, 4} for by_batch in both.values())
    for name, by_batch in both.items():
        for batch, latency in by_batch.items():
            assert (latency.batch, latency.runs, latency.source) == (batch, 10, "measured")  # 2 rounds x 5
            assert latency.p50 > 0 and latency.runtime.startswith("onnxruntime")
    one = measure_runners_side_by_side({"a": OnnxRuntimeRunner(student_onnx, 1)}, 2, timing, rounds=3)
    assert one["a"].batch == 2 and one["a"].runs == 15
