"""bf16 autocast only where the CPU computes bf16 natively: emulated bf16 doubles a training step."""

import torch

from edgekd import train


def test_cpu_bf16_needs_native_support(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert train._bf16_supported(cpu) is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert train._bf16_supported(cpu) is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
