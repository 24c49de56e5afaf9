"""Where a training run's time goes, measured in one process on the same data and models.

Four parts: the input pipeline (decode vs decoded cache), the training step (Lightning vs a
hand-written loop), forward + backward per model, and eager vs ONNX Runtime latency.
`python -m petseg.bench --help` (petseg.bench.cli.USAGE) tells what each measures and how.
"""

from petseg.bench.cli import main, run
from petseg.bench.models import bench_onnx
from petseg.bench.step import InMemory, PlainLoop, lightning_step_seconds, paired_step_seconds
from petseg.config import compose_run

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
