"""`python -m petseg.export ckpt_path=... [format=onnx] [output=...] [image_size=...]`: deployment.

Exports the checkpoint's network (eval mode: BatchNorm running statistics, no dropout) to ONNX with
`torch.onnx.export(..., dynamo=True)` at a fixed square size and a dynamic batch dimension (input
`image` float32 (B, 3, S, S) in [0, 1], output `logits` (B, num_classes, S, S)). The TorchScript
exporter and `torch.jit.trace` cannot take SegNet: its MaxUnpool2d's index check is a tensor
condition; the dynamo exporter handles it. Then ONNX Runtime runs the file on a seeded random batch:
the command prints the max abs difference of the logits and the argmax agreement against eager
PyTorch, and the batch-1 latency of both, and fails (exit 1) when they disagree beyond
`atol` / `min_agreement`.

Needs the `export` extra: onnx, onnxscript, onnxruntime.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from petseg.errors import ConfigError, PetsegError, print_user_error
from petseg.evaluate import load_module
from petseg.metrics import argmax_classes
from petseg.predict import resolve_image_size

log = logging.getLogger("petseg.export")

FORMATS = ("onnx",)
INPUT_NAME, OUTPUT_NAME = "image", "logits"
EXPORT_EXTRA = "pip install onnx onnxscript onnxruntime (or pip install -e '.[export]')"


class ParityError(PetsegError):
    """The exported model's outputs differ from eager PyTorch's beyond the tolerances."""


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


def check_options(cfg: DictConfig) -> None:
    """The options, checked before the checkpoint loads."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format}: not supported; use one of {', '.join(FORMATS)}")
    for key in ("batch_size", "runs"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key}={value} must be a positive integer")


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export `cfg.ckpt_path`, check it against eager PyTorch; returns the figures printed."""
    check_options(cfg)
    module = load_module(cfg.get("ckpt_path"))
    net_cfg = dict(module.hparams.net)
    size, source = resolve_image_size(cfg.get("image_size"), net_cfg, cfg.ckpt_path)
    require_onnx()
    in_channels = int(net_cfg.get("in_channels", 3))
    ckpt = Path(cfg.ckpt_path)
    run_dir = Path(cfg.paths.output_dir)
    out = Path(cfg.output) if cfg.get("output") else run_dir / f"{ckpt.stem}.onnx"
    net = module.net.eval()
    log.info("Exporting %s at %dx%d (%s) to %s", ckpt, size, size, source, out)
    try:
        export_onnx(net, size, out, in_channels)
    except OSError as e:
        raise ConfigError(f"output={out}: cannot write it ({e.strerror})") from None
    session = ort_session(out)
    torch.manual_seed(int(cfg.seed))
    sample = torch.rand(cfg.batch_size, in_channels, size, size)
    result: dict[str, Any] = {
        "output": str(out),
        "image_size": size,
        "batch_size": cfg.batch_size,
        **parity(net, session, sample),
        **latencies(net, session, size, cfg.runs, in_channels),
        "threads": torch.get_num_threads(),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def report(result: dict[str, Any]) -> str:
    """The three lines the CLI prints: file, parity, latency."""
    return "\n".join(
        [
            f"wrote {result['output']} (input {INPUT_NAME}: B x 3 x {result['image_size']} x "
            f"{result['image_size']}, B dynamic)",
            f"parity on a random batch of {result['batch_size']}: max |logits diff| "
            f"{result['max_abs_diff']:.2e} (max |logit| {result['max_abs_logit']:.2f}), argmax "
            f"agreement {result['argmax_agreement']:.3f}%",
            f"batch-1 latency ({result['threads']} threads): eager PyTorch "
            f"{result['eager_ms']:.2f} ms, ONNX Runtime {result['onnxruntime_ms']:.2f} ms",
        ]
    )


def check_parity(result: dict[str, Any], atol: float, min_agreement: float) -> None:
    """Raise ParityError when ONNX Runtime's logits or labels disagree with eager PyTorch's.

    The logits may differ by atol x max(1, max |logit|): float32 rounding grows with magnitude.
    """
    allowed = atol * max(1.0, result.get("max_abs_logit", 1.0))
    if result["max_abs_diff"] > allowed or result["argmax_agreement"] < min_agreement:
        raise ParityError(
            f"ONNX Runtime disagrees with eager PyTorch: max |logits diff| "
            f"{result['max_abs_diff']:.2e} (allowed {allowed:.2e}: atol={atol} x max(1, max "
            f"|logit|)), argmax agreement "
            f"{result['argmax_agreement']:.3f}% (min_agreement={min_agreement}); the file is "
            f"at {result['output']}, do not deploy it"
        )


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        result = export(cfg)
        print(report(result))
        check_parity(result, float(cfg.atol), float(cfg.min_agreement))
    except PetsegError as e:
        print_user_error(e, log)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
