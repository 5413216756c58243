"""bf16 autocast only where the CPU computes bf16 natively: emulated bf16 doubles a training step."""

import torch

from edgekd.training import loop as train


def test_cpu_bf16_needs_native_support(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert train._bf16_supported(cpu) is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert train._bf16_supported(cpu) is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_mixed_precision_false_trains_the_teacher_in_fp32_and_caches_it_apart(fashion_slice, tmp_path, monkeypatch):
    from edgekd.config import load_profile
    from edgekd.stages import teacher as teacher_stage

    mixed = load_profile("smoke")
    fp32 = mixed.model_copy(update={"mixed_precision": False})
    assert teacher_stage.cache_entry(fp32, fashion_slice, tmp_path) != teacher_stage.cache_entry(mixed, fashion_slice, tmp_path)

    plans = []

    def record(model, objective, dataset, plan, **_):
        plans.append(plan)
        return train.TrainLog()

    monkeypatch.setattr(teacher_stage, "fit", record)
    for profile in (mixed, fp32):
        teacher_stage.obtain_teacher(teacher_stage.TeacherSource(), profile, fashion_slice, tmp_path / profile.name)
    assert [plan.fast_math for plan in plans] == [True, False]
