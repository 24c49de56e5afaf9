"""The bench's driver: every section in one process (`run`) and its command line (`main`)."""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from petseg.bench.common import data_source, precision_name
from petseg.bench.models import bench_model, onnx_row
from petseg.bench.pipeline import bench_pipeline, collate
from petseg.bench.report import markdown, write_report
from petseg.bench.step import bench_step
from petseg.checkpoint import resolve_device
from petseg.config import compose_run, model_names
from petseg.errors import ConfigError, PetsegError
from petseg.precision import cpu_has_bf16

USAGE = """\
Where a training run's time goes, measured in one process on the same data and models.

    python -m petseg.bench [--models vit_small,segformer,segnet_dsc | all] [--step-model NAME]
        [--batch 8] [--steps 10] [--warmup 2] [--rounds 8] [--precisions 32,bf16-mixed]
        [--data PATH|synthetic] [--skip pipeline,step,models,onnx] [--threads N]
        [--out outputs/bench] [overrides]

1. pipeline: samples/s of one process with one intra-op thread (a DataLoader worker's view)
   through the training transforms: JPEG/PNG decode + albumentations (PetTrimaps) vs the decoded
   cache (petseg.data.cache), the same samples; "n/a" when the cache is not available.
2. step: training images/s of SegModule under Lightning vs a hand-written PyTorch loop, with the
   same network (`--step-model`), loss, optimizer, initial weights, precision
   (`trainer.precision`) and batches already on the device. Only steps after `--warmup` are
   timed, each from its start to the next one's (a Callback on the Lightning side: fit's setup,
   teardown and epoch-end metrics are out, Lightning's work between steps is in). Rounds alternate
   which side goes first; the ratio is of the median steps (CPU: robust to other processes) or
   of the totals (CUDA).
3. models: forward+backward images/s per model and precision at `data.image_size`, and the
   achieved TFLOP/s: mult-adds (petseg.summary, torch's FLOP counter) x 2 FLOPs x 3 (forward
   + backward).
4. onnx: batch-1 latency, eager PyTorch vs ONNX Runtime, per model that exports (petseg.export).

Hydra overrides compose as for `python -m petseg.train` (e.g. `data.image_size=64`,
`optimizer=adamw`, `trainer.precision=bf16-mixed`, `perf.channels_last=true`). Prints Markdown
tables and writes `<out>/latest.json` and `<out>/latest.md`.
"""
DEFAULT_MODELS = ("vit_small", "segformer", "segnet_dsc")  # the cheap ones; --models all
SECTIONS = ("pipeline", "step", "models", "onnx")


def run(
    overrides: Sequence[str] = (),
    models: Sequence[str] = DEFAULT_MODELS,
    batch: int = 8,
    steps: int = 10,
    warmup: int = 2,
    rounds: int = 8,
    precisions: Sequence[str] = ("32", "bf16-mixed"),
    samples: int = 64,
    data: str | Path | None = None,
    skip: Sequence[str] = (),
    step_model: str | None = None,
    onnx_runs: int = 10,
    device: str = "auto",
    out: str | Path | None = "outputs/bench",
) -> dict[str, Any]:
    """Every section in one process; returns the result (and writes it unless out is None)."""
    if set(skip) - set(SECTIONS):
        raise ConfigError(f"--skip {','.join(skip)}: sections are {', '.join(SECTIONS)}")
    unknown = set(models) - set(model_names()) | ({step_model} - {None, *model_names()})
    if unknown or not models:
        raise ConfigError(
            f"--models {','.join(models)} --step-model {step_model}: unknown {sorted(unknown)}; "
            f"choose from {', '.join(model_names())} (--models also: all)"
        )
    if batch < 1 or steps < 1 or warmup < 0 or rounds < 1 or samples < 1:
        raise ConfigError("--batch, --steps, --rounds and --samples must be >= 1, --warmup >= 0")
    for precision in precisions:
        precision_name(precision)
    dev = resolve_device(device)
    base_cfg = compose_run(overrides)
    size = int(base_cfg.data.image_size)
    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as work_dir:
        work = Path(work_dir)
        base, names, source = data_source(data, work, samples)
        result: dict[str, Any] = {
            "env": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "device": dev.type,
                "device_name": torch.cuda.get_device_name(dev)
                if dev.type == "cuda"
                else (platform.processor() or platform.machine()),
                "threads": torch.get_num_threads(),
                # what trainer.precision=auto decides by (the fp32 vs bf16 rows measure it)
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "cpu_bf16": cpu_has_bf16()[1],
                "data": source,
                "image_size": size,
                "batch": batch,
                "overrides": list(overrides),
            },
            "pipeline_cache_vs_decode": None,
            "step_lightning_vs_plain": None,
        }
        # The decode path's samples are the data of every other part (same images, same masks).
        pipe = bench_pipeline(base_cfg, base, names, samples, cache="pipeline" not in skip)
        pool = pipe.pop("_samples")
        if "pipeline" not in skip:
            result["pipeline"] = pipe
            if pipe["cache_samples_per_s"]:
                ratio = pipe["cache_samples_per_s"] / pipe["decode_samples_per_s"]
                result["pipeline_cache_vs_decode"] = ratio
        batches = collate(pool, batch, warmup + steps, dev)
        if base_cfg.perf.channels_last:
            batches = [
                {**b, "image": b["image"].contiguous(memory_format=torch.channels_last)}
                for b in batches
            ]
        if "step" not in skip:
            step_cfg = compose_run([*overrides, f"model={step_model or models[0]}"])
            result["step"] = bench_step(step_cfg, batches, warmup, rounds, dev)
            result["step"]["model"] = step_model or models[0]
            result["step_lightning_vs_plain"] = result["step"]["ratio"]
        if "models" not in skip or "onnx" not in skip:
            result["models"], result["onnx"] = [], []
            for name in models:
                cfg = compose_run([*overrides, f"model={name}"])
                if "models" not in skip:
                    result["models"] += bench_model(cfg, name, batches, warmup, precisions, dev)
                if "onnx" not in skip:
                    result["onnx"].append(onnx_row(cfg, name, work, onnx_runs))
    if out is not None:
        write_report(result, out)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m petseg.bench",
        description=USAGE,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for petseg.train")
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated model= names, or all"
    )
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=8, help="Lightning vs plain rounds")
    parser.add_argument(
        "--step-model",
        default=None,
        help="model of the Lightning vs plain part (first of --models)",
    )
    parser.add_argument(
        "--precisions", default="32,bf16-mixed", help="per-model fwd+bwd precisions"
    )
    parser.add_argument("--samples", type=int, default=64, help="pipeline samples timed")
    parser.add_argument(
        "--data", default=None, help="data root (default ../shared/data/pets-mini) or synthetic"
    )
    parser.add_argument("--skip", default="", help=f"sections to skip: {','.join(SECTIONS)}")
    parser.add_argument("--onnx-runs", type=int, default=10, help="timed batch-1 runs")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="outputs/bench", help="folder for latest.json/.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("lightning.pytorch", "lightning.fabric"):  # "GPU available: ..." per fit
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    models = model_names() if args.models == "all" else [m for m in args.models.split(",") if m]
    try:
        result = run(
            overrides=args.overrides,
            models=models,
            batch=args.batch,
            steps=args.steps,
            warmup=args.warmup,
            rounds=args.rounds,
            precisions=[p for p in args.precisions.split(",") if p],
            samples=args.samples,
            data=args.data,
            skip=[s for s in args.skip.split(",") if s],
            step_model=args.step_model,
            onnx_runs=args.onnx_runs,
            device=args.device,
            out=args.out,
        )
    except PetsegError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(markdown(result))
    print(f"written: {Path(args.out) / 'latest.json'}, {Path(args.out) / 'latest.md'}")
