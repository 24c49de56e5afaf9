"""ONNX export of a network and ONNX Runtime beside eager PyTorch: parity and latency.

Needs the `export` extra: onnx, onnxscript, onnxruntime (require_onnx says what to install).
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petseg.errors import ConfigError
from petseg.metrics import argmax_classes

INPUT_NAME, OUTPUT_NAME = "image", "logits"
EXPORT_EXTRA = "pip install onnx onnxscript onnxruntime (or pip install -e '.[export]')"


def require_onnx() -> None:
    """Fail with one line naming what to install unless onnx, onnxscript, onnxruntime import."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"format=onnx needs {', '.join(missing)}: {EXPORT_EXTRA}")


def export_onnx(net: nn.Module, image_size: int, path: str | Path, in_channels: int = 3) -> Path:
    """`net` in eval mode as one self-contained .onnx file; batch is dynamic, H = W = image_size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    example = torch.rand(2, in_channels, image_size, image_size)  # 2: batch is not fixed at 1
    batch = torch.export.Dim("batch", min=1, max=4096)
    for name in ("onnx_ir", "onnxscript"):  # their per-pass INFO lines and "ambiguous attribute"
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, "ambiguous attribute")
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            external_data=False,  # one file: these networks are far below protobuf's 2 GB
            verbose=False,
        )
    return path


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session; `threads` intra-op threads (default: torch's thread count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(session: Any, x: torch.Tensor) -> torch.Tensor:
    """Run the session on a (B, 3, S, S) float tensor; logits as a torch tensor."""
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().numpy()})
    return torch.from_numpy(out)


def parity(net: nn.Module, session: Any, x: torch.Tensor) -> dict[str, float]:
    """Max abs logit difference and argmax agreement (%) of ONNX Runtime against eager PyTorch."""
    net.eval()
    with torch.inference_mode():
        ref = net(x).float()
    out = ort_logits(session, x)
    same = argmax_classes(out) == argmax_classes(ref)  # (B, H, W)
    return {
        "max_abs_diff": float((out - ref).abs().max()),
        "max_abs_logit": float(ref.abs().max()),
        "argmax_agreement": 100.0 * float(same.double().mean()),
    }


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    """Median wall time of `fn()` in ms, after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def latencies(
    net: nn.Module, session: Any, image_size: int, runs: int, in_channels: int = 3
) -> dict[str, float]:
    """Batch-1 latency (ms, median of `runs`) of eager PyTorch (inference mode) and ONNX Runtime."""
    x = torch.rand(1, in_channels, image_size, image_size)
    net.eval()
    with torch.inference_mode():
        eager = median_ms(lambda: net(x), runs)
    return {"eager_ms": eager, "onnxruntime_ms": median_ms(lambda: ort_logits(session, x), runs)}
