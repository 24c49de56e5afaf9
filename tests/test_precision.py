"""trainer.precision=auto: bf16 only where the device computes it in hardware."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from petseg import precision


@pytest.fixture
def no_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(
    ("capability", "flags", "expected"),
    [
        ("AVX2", {"avx2", "fma"}, "32-true"),  # an AMD EPYC without bf16: emulated bf16 is slow
        ("AVX512", {"avx512f"}, "32-true"),  # AVX512 alone has no bf16 dot products
        ("AVX512", {"avx512f", "avx512_bf16"}, "bf16-mixed"),
        ("AVX512", {"avx512f", "amx_bf16", "amx_tile"}, "bf16-mixed"),
        ("DEFAULT", set(), "32-true"),  # not Linux, or no flags listed
    ],
)
def test_auto_on_cpu_follows_bf16_hardware(
    monkeypatch, no_cuda, capability: str, flags: set[str], expected: str
) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    for accelerator in ("cpu", "auto"):
        assert precision.resolve_precision("auto", accelerator) == expected


def test_auto_on_cuda_prefers_bf16_then_fp16(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.auto_precision("auto") == ("bf16-mixed", "NVIDIA H200 supports bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.resolve_precision("auto", "gpu") == "16-mixed"


def test_explicit_precision_is_kept(no_cuda) -> None:
    assert precision.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert precision.resolve_precision(32, "cpu") == 32


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert precision.cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == set()
