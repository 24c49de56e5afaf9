"""Where a training run's time goes, measured in one process on the same data and models.

    python -m petseg.bench [--models vit_small,segformer,segnet_dsc | all] [--step-model NAME]
        [--batch 8] [--steps 10] [--warmup 2] [--rounds 8] [--precisions 32,bf16-mixed]
        [--data PATH|synthetic] [--skip pipeline,step,models,onnx] [--threads N]
        [--out outputs/bench] [overrides]

1. pipeline: samples/s of one process (a DataLoader worker's view) through the training
   transforms: JPEG/PNG decode + albumentations (PetTrimaps, today's path) vs the decoded cache
   (petseg.data.cache), the same samples; "n/a" when the cache is not available.
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

from petseg.bench.cli import main, run
from petseg.bench.common import compose_run
from petseg.bench.models import bench_onnx
from petseg.bench.step import InMemory, PlainLoop, lightning_step_seconds, paired_step_seconds

__all__ = [
    "InMemory",
    "PlainLoop",
    "bench_onnx",
    "compose_run",
    "lightning_step_seconds",
    "main",
    "paired_step_seconds",
    "run",
]
