"""`trainer.precision=auto`: the fastest precision the chosen device runs well.

CUDA: bf16-mixed where the GPU supports bf16, else 16-mixed. CPU: bf16-mixed only with bf16
hardware (AMX or AVX512-BF16), else 32-true, since emulated bf16 runs far slower than fp32.
torch's public `get_cpu_capability()` names the vector ISA but not bf16 support, so the CPU's
flags come from the kernel (/proc/cpuinfo) as well.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("petseg.precision")

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first CPU's feature flags; empty where the kernel does not list them (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_bf16() -> tuple[bool, str]:
    """(whether this CPU computes bf16 in hardware, the reason in words)."""
    capability = torch.backends.cpu.get_cpu_capability()
    found = sorted(set(BF16_CPU_FLAGS) & cpu_flags())
    if found and capability == "AVX512":
        return True, f"CPU capability {capability} with {', '.join(found)}"
    return False, f"CPU capability {capability}, no AMX/AVX512-BF16"


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning's `accelerator` choice lands on a CUDA device here."""
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def auto_precision(accelerator: str) -> tuple[str, str]:
    """(Lightning precision string, why) for `trainer.precision=auto` on `accelerator`."""
    if uses_cuda(accelerator):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"{torch.cuda.get_device_name()} supports bf16"
        return "16-mixed", "this GPU has no bf16 support"
    fast, why = cpu_has_bf16()
    return ("bf16-mixed" if fast else "32-true"), why


def resolve_precision(precision: str | int, accelerator: str) -> str | int:
    """`precision` unchanged, or for `auto` the choice of auto_precision, logged in one line."""
    if precision != "auto":
        return precision
    chosen, why = auto_precision(accelerator)
    log.info("trainer.precision=auto -> %s (%s)", chosen, why)
    return chosen
