"""The bench's result as Markdown tables and `<out>/latest.json` + `<out>/latest.md`."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from petseg.markdown import format_table


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    env = result["env"]
    parts = [
        f"torch {env['torch']}, {env['device_name']} ({env.get('cpu_bf16', '')}), "
        f"{env['threads']} threads; data: "
        f"{env['data']}; {env['image_size']} px",
        "",
        format_table(
            [
                {
                    "figure": "pipeline: cache / decode (samples/s)",
                    "ratio": fmt(result["pipeline_cache_vs_decode"], 2),
                },
                {
                    "figure": "train step: Lightning / plain loop (images/s)",
                    "ratio": fmt(result["step_lightning_vs_plain"], 3),
                },
            ]
        ),
    ]
    if pipe := result.get("pipeline"):
        parts += [
            "",
            f"Input pipeline, one process, one intra-op thread, {pipe['samples']} samples:",
            "",
            format_table(
                [
                    {
                        "path": "JPEG decode + albumentations",
                        "samples/s": fmt(pipe["decode_samples_per_s"]),
                    },
                    {
                        "path": "decoded cache + albumentations"
                        + ("" if pipe["cache_samples_per_s"] else f" ({pipe['cache']})"),
                        "samples/s": fmt(pipe["cache_samples_per_s"]),
                    },
                ]
            ),
        ]
    if step := result.get("step"):
        parts += [
            "",
            f"Training step, {step['model']}, batch {step['batch']}, {step['image_size']} px, "
            f"precision {step['precision']}, {step['steps']} steps after {step['warmup']} warm-up, "
            f"{step['rounds']} rounds:",
            "",
            format_table(
                [
                    {
                        "loop": side,
                        "median step (ms)": fmt(1000 * statistics.median(step[f"{key}_step_s"])),
                        "fastest step (ms)": fmt(1000 * min(step[f"{key}_step_s"])),
                        "all steps (s)": fmt(sum(step[f"{key}_step_s"]), 3),
                        "images/s (median step)": fmt(step[f"{key}_images_per_s"], 2),
                    }
                    for side, key in (("plain PyTorch", "plain"), ("Lightning", "lightning"))
                ]
            ),
            "",
            f"plain / Lightning: {step['ratio']:.3f} ({step['method']}); of median steps "
            f"{step['ratio_median_step']:.3f}, of all steps {step['ratio_total']:.3f}",
        ]
    if models := result.get("models"):
        parts += [
            "",
            "Forward + backward per model (achieved TFLOP/s = 6 x mult-adds x images/s):",
            "",
            format_table(
                [
                    {
                        "model": r["model"],
                        "precision": r["precision"],
                        "batch": r["batch"],
                        "images/s": fmt(r["images_per_s"], 2),
                        "mult-adds (G)": fmt(r["mult_adds_g"], 3),
                        "TFLOP/s": fmt(r["tflops"], 4),
                    }
                    for r in models
                ]
            ),
        ]
    if onnx := result.get("onnx"):
        parts += [
            "",
            "Batch-1 latency, eager PyTorch vs ONNX Runtime (CPU):",
            "",
            format_table(
                [
                    {
                        "model": r["model"],
                        "eager (ms)": fmt(r.get("eager_ms"), 2),
                        "ONNX Runtime (ms)": fmt(r.get("onnxruntime_ms"), 2),
                        "speed-up": fmt(
                            r["eager_ms"] / r["onnxruntime_ms"] if "eager_ms" in r else None, 2
                        ),
                        "max abs diff": r.get("error") or fmt(r.get("max_abs_diff")),
                    }
                    for r in onnx
                ]
            ),
        ]
    return "\n".join(parts) + "\n"


def finite_or_none(value: Any) -> Any:
    """JSON-safe: NaN/Inf become null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value


def write_report(result: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "latest.json", out / "latest.md"
    json_path.write_text(json.dumps(finite_or_none(result), indent=2) + "\n")
    md_path.write_text(markdown(result))
    return json_path, md_path
