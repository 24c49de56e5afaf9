"""`python -m petseg.export ckpt_path=... [format=onnx] [output=...] [image_size=...]`: deployment.

The checkpoint's network in eval mode to ONNX with `torch.onnx.export(..., dynamo=True)`: input
`image` float32 (B, 3, S, S) in [0, 1], output `logits` (B, num_classes, S, S), S fixed, B dynamic.
Dynamo because TorchScript and `torch.jit.trace` cannot take SegNet (MaxUnpool2d's index check is
a tensor condition). ONNX Runtime then runs a seeded batch: prints the logit difference, argmax
agreement and both batch-1 latencies, and exits 1 beyond `atol` / `min_agreement`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from petseg.checkpoint import load_module, resolve_image_size
from petseg.config import CONF_DIR
from petseg.errors import ConfigError, PetsegError, print_user_error
from petseg.onnx import INPUT_NAME, export_onnx, latencies, ort_session, parity, require_onnx

log = logging.getLogger("petseg.export")

FORMATS = ("onnx",)


class ExportError(PetsegError):
    """The ONNX exporter cannot take the network (an operator or a shape it does not handle)."""


class ParityError(PetsegError):
    """The exported model's outputs differ from eager PyTorch's beyond the tolerances."""


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
    except Exception as e:  # torch.export and onnxscript raise many types; keep their first line
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise ExportError(
            f"torch.onnx.export (dynamo) cannot export {net_cfg['_target_'].rsplit('.', 1)[-1]} "
            f"of ckpt_path={ckpt} at {size} px ({type(e).__name__}: {reason}); the checkpoint "
            "still runs in PyTorch (petseg.predict)"
        ) from e
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


@hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
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
