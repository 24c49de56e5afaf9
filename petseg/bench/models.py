"""The models and onnx sections, per model: fwd+bwd images/s and TFLOP/s; eager vs ONNX Runtime."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from petseg.bench.common import Batch, precision_name
from petseg.bench.step import PlainLoop
from petseg.build import build_module
from petseg.errors import PetsegError
from petseg.flops import mult_adds

# ---------------------------------------------------------------------------------------------
# 3. Per model: forward + backward throughput


def bench_model(
    cfg: DictConfig,
    name: str,
    batches: list[Batch],
    warmup: int,
    precisions: Sequence[str],
    device: torch.device,
) -> list[dict[str, Any]]:
    """One row per precision: fwd+bwd images/s and TFLOP/s from the forward's mult-adds."""
    torch.manual_seed(0)
    module = build_module(cfg).to(device)
    size = int(batches[0]["image"].shape[-1])
    macs = mult_adds(module.net, torch.rand(1, 3, size, size, device=device))  # batch 1, eval
    module.configure_model()  # compiles the network when perf.compile is set
    batch = int(batches[0]["image"].shape[0])
    rows = []
    for precision in precisions:
        loop = PlainLoop(module.net, module.criterion, precision_name(precision), device)
        seconds = loop.seconds(batches, warmup)
        rate = batch / statistics.median(seconds)
        rows.append(
            {
                "model": name,
                "precision": precision,
                "batch": batch,
                "image_size": size,
                "images_per_s": rate,
                "mult_adds_g": macs / 1e9,
                "tflops": 6 * macs * rate / 1e12,  # 2 FLOPs per mult-add, backward ~ 2x forward
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# 4. Eager vs ONNX Runtime


def bench_onnx(cfg: DictConfig, name: str, work: Path, runs: int) -> dict[str, Any]:
    """Batch-1 latency of eager PyTorch and ONNX Runtime (CPU); `error` when export fails."""
    from petseg.onnx import export_onnx, latencies, ort_session, parity

    size = int(cfg.data.image_size)
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model).eval()  # plain CPU network, as exported
    row: dict[str, Any] = {"model": name, "image_size": size}
    try:
        path = export_onnx(net, size, work / f"{name}.onnx")
        session = ort_session(path)
    except Exception as e:  # an exporter failure is a finding to report, not a crash
        message = (str(e).strip().splitlines() or [""])[0][:200]
        return {**row, "error": f"{type(e).__name__}: {message}"}
    check = parity(net, session, torch.rand(2, 3, size, size))
    return {**row, **latencies(net, session, size, runs), "max_abs_diff": check["max_abs_diff"]}


def onnx_row(cfg: DictConfig, name: str, work: Path, runs: int) -> dict[str, Any]:
    try:
        from petseg.onnx import require_onnx

        require_onnx()
    except PetsegError as e:
        return {"model": name, "error": f"n/a: {e}"}
    return bench_onnx(cfg, name, work, runs)
