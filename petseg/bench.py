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
`optimizer=adamw`, `trainer.precision=bf16-mixed`, `model.channels_last=true`). Prints Markdown
tables and writes `<out>/latest.json` and `<out>/latest.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import logging
import math
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn

from petseg.config import net_config
from petseg.data.oxford import PetTrimaps, find_base, read_split
from petseg.data.synthetic import ensure_synthetic
from petseg.data.transforms import train_pipeline
from petseg.errors import ConfigError, PetsegError
from petseg.module import SegModule
from petseg.predict import resolve_device
from petseg.summary import CONF_DIR, format_table, model_names, mult_adds
from petseg.train import build_module

PETS_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "pets-mini"
DEFAULT_MODELS = ("vit_small", "segformer", "segnet_dsc")  # the cheap ones; --models all
SECTIONS = ("pipeline", "step", "models", "onnx")
# Lightning precision -> autocast dtype (None: no autocast) for the hand-written loop.
AUTOCAST = {"32": None, "32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}

Batch = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Config, data, device


def compose_run(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `python -m petseg.train <overrides>` would run with."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def precision_name(value: Any) -> str:
    """Lightning's precision as a string key of AUTOCAST; others are refused with the choices."""
    name = str(value)
    if name not in AUTOCAST:
        raise ConfigError(f"precision {name}: the bench supports {', '.join(AUTOCAST)}")
    return name


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """What Lightning's precision plugin wraps the forward and loss in."""
    dtype = AUTOCAST[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_source(
    data: str | Path | None, work: Path, count: int = 64
) -> tuple[Path, list[str], str]:
    """(dataset folder, trainval names, description): `data` if it holds the dataset, else
    ../shared/data/pets-mini, else `count` (8..64) synthetic samples generated under `work`."""
    if data != "synthetic":
        root = Path(data) if data else PETS_MINI
        base = find_base(root)
        if base is not None:
            return base, read_split(base, "trainval"), f"{root} (JPEG)"
        if data:
            raise ConfigError(
                f"--data {data}: no Oxford-IIIT Pet dataset there (images/ and "
                "annotations/trimaps/); point it at the folder holding oxford-iiit-pet/, or pass "
                "--data synthetic"
            )
    count = max(8, min(count, 64))
    base = ensure_synthetic(work / "synthetic", num_trainval=count, num_test=1, size=160, seed=0)
    return base, read_split(base, "trainval"), "synthetic 160 px (JPEG)"


def decode_dataset(cfg: DictConfig, base: Path, names: Sequence[str]) -> PetTrimaps:
    """Today's training path: JPEG/PNG decode (draft-scaled) + resize + train augmentations."""
    size = int(cfg.data.image_size)
    augment = hydra.utils.instantiate(cfg.data.train_transforms)
    return PetTrimaps(base, names, train_pipeline(size, augment), draft_size=size)


def cached_dataset(source: PetTrimaps, size: int) -> PetTrimaps:
    """The same samples and transforms read from petseg.data.cache's decoded arrays.

    The one place the bench meets the cache's API; ImportError, AttributeError or TypeError
    (that API not there, or changed) make the bench report n/a. The cache is built once, untimed,
    beside the dataset or in the user cache (petseg.data.cache.cache_root) and reused.
    """
    from petseg.data.cache import ensure_cache

    # Label "bench": its own small cache, so it never replaces (prunes) a training run's.
    rows = ensure_cache(source.base, source.names, size, "bench")
    if rows is None:
        raise OSError("the decoded cache could not be written (see the warning above)")
    return PetTrimaps(source.base, source.names, source.transform, source.draft_size, cache=rows)


# ---------------------------------------------------------------------------------------------
# 1. Input pipeline


def samples_per_s(dataset: PetTrimaps, count: int, warmup: int = 2) -> tuple[float, list[Batch]]:
    """Samples/s of `dataset[i]` for i < count (after `warmup` untimed reads), and the samples."""
    for i in range(min(warmup, len(dataset))):
        dataset[i]
    start = time.perf_counter()
    samples = [dataset[i % len(dataset)] for i in range(count)]
    return count / (time.perf_counter() - start), samples


def bench_pipeline(
    cfg: DictConfig, base: Path, names: Sequence[str], count: int, cache: bool = True
) -> dict[str, Any]:
    """Decode path vs cache path, same samples; `_samples` (decode path's) feed the other parts."""
    names = list(names)[:count]
    decode = decode_dataset(cfg, base, names)
    decode_rate, samples = samples_per_s(decode, count)
    result: dict[str, Any] = {
        "samples": count,
        "decode_samples_per_s": decode_rate,
        "cache_samples_per_s": None,
        "cache_build_s": None,
        "cache": None,
    }
    if not cache:
        return {**result, "_samples": samples}
    try:
        start = time.perf_counter()
        cached = cached_dataset(decode, int(cfg.data.image_size))
        cached[0]  # opens the memory maps
        result["cache_build_s"] = time.perf_counter() - start
        result["cache_samples_per_s"], _ = samples_per_s(cached, count)
        result["cache"] = "petseg.data.cache"
    except (ImportError, AttributeError, TypeError, OSError) as e:
        result["cache"] = f"n/a: {type(e).__name__}: {e}"
    result["_samples"] = samples
    return result


def collate(samples: Sequence[Batch], batch_size: int, count: int, device: torch.device) -> list:
    """`count` batches of `batch_size` from `samples` (cycled), on `device`."""
    batches = []
    for b in range(count):
        chunk = [samples[(b * batch_size + i) % len(samples)] for i in range(batch_size)]
        batches.append({k: torch.stack([s[k] for s in chunk]).to(device) for k in chunk[0]})
    return batches


# ---------------------------------------------------------------------------------------------
# 2. Training step: Lightning vs a hand-written loop


class InMemory:
    """Batches already on the device, as an iterable Lightning takes (a list would be read as one
    dataloader per element)."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class PlainLoop:
    """A hand-written training step: forward and loss (under autocast), backward, optimizer step.

    Without an optimizer, forward + backward alone (the per-model throughput).
    """

    def __init__(
        self,
        net: nn.Module,
        criterion: nn.Module,
        precision: str,
        device: torch.device,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.net, self.criterion, self.optimizer = net.train(), criterion, optimizer
        self.precision, self.device = precision, device
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    @classmethod
    def of(cls, module: SegModule, precision: str, device: torch.device) -> PlainLoop:
        """The loop over a SegModule's own network, loss and optimizer, as fit would set them up."""
        module.to(device)
        module.configure_model()  # compiles the network when model.compile is set
        configured = module.configure_optimizers()
        optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
        return cls(module.net, module.criterion, precision, device, optimizer)

    def step(self, batch: Batch) -> None:
        with autocast(self.precision, self.device):
            loss = self.criterion(self.net(batch["image"]), batch["mask"])
        if self.optimizer is None:
            self.net.zero_grad(set_to_none=True)
            loss.backward()
            return
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def seconds(self, batches: list[Batch], warmup: int) -> list[float]:
        """Seconds per step after `warmup`; the device is synchronised at the first and last
        boundary only, as StepTimer does."""
        stamps = []
        for i, batch in enumerate(batches):
            if i == warmup:
                synchronize(self.device)
            if i >= warmup:
                stamps.append(time.perf_counter())
            self.step(batch)
        synchronize(self.device)
        stamps.append(time.perf_counter())
        return [b - a for a, b in itertools.pairwise(stamps)]


class StepTimer(L.Callback):
    """Step boundaries after `warmup`: the start of each batch and the end of the last one.

    Between two starts lies all the work of one step, Lightning's own between steps included.
    The device is synchronised at the first and the last boundary only (a sync per step would
    stop the CPU running ahead of a GPU, which is part of what is measured).
    """

    def __init__(self, warmup: int, total: int, device: torch.device) -> None:
        self.warmup, self.total, self.device = warmup, total, device
        self.stamps: list[float] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, idx: int
    ) -> None:
        if idx == self.warmup:
            synchronize(self.device)
        if idx >= self.warmup:
            self.stamps.append(time.perf_counter())

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        if idx == self.total - 1:
            synchronize(self.device)
            self.stamps.append(time.perf_counter())

    def steps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.stamps)]


class PlainBeside(L.Callback):
    """After each Lightning step, one plain step of a twin module on the same batch, timed.

    The two steps of a pair run back to back, so a shared CPU's slow spells hit both alike. Goes
    after StepTimer in the callback list: StepTimer's interval from one step's start to the next
    then holds one Lightning step plus this plain step, which `paired_step_seconds` subtracts.
    """

    def __init__(self, loop: PlainLoop, warmup: int) -> None:
        self.loop, self.warmup = loop, warmup
        self.seconds: list[float] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        start = time.perf_counter()
        self.loop.step(batch)
        if idx >= self.warmup:
            self.seconds.append(time.perf_counter() - start)


def lightning_trainer(
    precision: str, device: torch.device, steps: int, callbacks: list, root: str
) -> L.Trainer:
    """A Trainer that only trains: no logger, checkpoints, progress bar, summary or validation."""
    return L.Trainer(
        default_root_dir=root,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def lightning_step_seconds(
    module: SegModule, batches: list[Batch], warmup: int, precision: str, device: torch.device
) -> list[float]:
    """Seconds per step after `warmup` under `Trainer.fit`."""
    timer = StepTimer(warmup, len(batches), device)
    with tempfile.TemporaryDirectory() as root:
        trainer = lightning_trainer(precision, device, len(batches), [timer], root)
        trainer.fit(module, train_dataloaders=InMemory(batches))
    assert len(timer.stamps) == len(batches) - warmup + 1, "the timer missed a step"
    return timer.steps()


def paired_step_seconds(
    module: SegModule,
    twin: SegModule,
    batches: list[Batch],
    warmup: int,
    precision: str,
    device: torch.device,
) -> tuple[list[float], list[float]]:
    """(Lightning, plain) seconds per step after `warmup`, each pair run back to back: `module`
    under `Trainer.fit`, `twin` (same initial weights) in a PlainLoop. CPU only: the pairs'
    arithmetic needs the stamps to be the work's end, which a GPU's queue is not."""
    timer = StepTimer(warmup, len(batches), device)
    beside = PlainBeside(PlainLoop.of(twin, precision, device), warmup)
    with tempfile.TemporaryDirectory() as root:
        trainer = lightning_trainer(precision, device, len(batches), [timer, beside], root)
        trainer.fit(module, train_dataloaders=InMemory(batches))
    plain = beside.seconds
    steps = timer.steps()  # the last one ends before its plain step, the others after it
    lightning = [s - p for s, p in zip(steps[:-1], plain[:-1], strict=True)] + steps[-1:]
    return lightning, plain


def bench_step(
    cfg: DictConfig, batches: list[Batch], warmup: int, rounds: int, device: torch.device
) -> dict[str, Any]:
    """Lightning vs plain images/s, both from the same initial weights in every round.

    CPU: each Lightning step is followed by a plain step on the same batch (PlainBeside); `ratio`
    is the median over pairs of plain / Lightning seconds, which a shared CPU's slow spells
    (they last longer than a pair) leave alone. CUDA: separate runs, alternating which goes
    first; `ratio` = plain / Lightning total seconds (a GPU lets the CPU run ahead, so per-step
    stamps mean little).
    """
    if len(batches) <= warmup:
        raise ConfigError(f"--steps must be >= 1 (got {len(batches) - warmup} after warmup)")
    precision = precision_name(cfg.trainer.precision)
    torch.manual_seed(0)
    initial = copy.deepcopy(build_module(cfg).state_dict())

    def fresh() -> SegModule:
        module = build_module(cfg)
        module.load_state_dict(initial)
        return module

    steps: dict[str, list[float]] = {"plain": [], "lightning": []}
    for r in range(rounds):
        if device.type == "cpu":
            lightning, plain = paired_step_seconds(
                fresh(), fresh(), batches, warmup, precision, device
            )
            steps["lightning"] += lightning
            steps["plain"] += plain
            continue
        for side in ("plain", "lightning") if r % 2 == 0 else ("lightning", "plain"):
            if side == "plain":
                steps[side] += PlainLoop.of(fresh(), precision, device).seconds(batches, warmup)
            else:
                steps[side] += lightning_step_seconds(fresh(), batches, warmup, precision, device)
    median = {side: statistics.median(s) for side, s in steps.items()}
    total = {side: sum(s) for side, s in steps.items()}
    paired = device.type == "cpu"
    batch = int(batches[0]["image"].shape[0])
    return {
        "precision": precision,
        "batch": batch,
        "image_size": int(batches[0]["image"].shape[-1]),
        "warmup": warmup,
        "steps": len(batches) - warmup,
        "rounds": rounds,
        "method": "paired steps, median ratio" if paired else "separate runs, total time",
        "plain_images_per_s": batch / median["plain"],
        "lightning_images_per_s": batch / median["lightning"],
        "plain_step_s": steps["plain"],
        "lightning_step_s": steps["lightning"],
        "ratio_median_step": median["plain"] / median["lightning"],
        "ratio_total": total["plain"] / total["lightning"],
        "ratio": (
            statistics.median(
                p / q for p, q in zip(steps["plain"], steps["lightning"], strict=True)
            )
            if paired
            else total["plain"] / total["lightning"]
        ),
    }


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
    module.configure_model()  # compiles the network when model.compile is set
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
    from petseg.export import export_onnx, latencies, ort_session, parity

    size = int(cfg.data.image_size)
    torch.manual_seed(0)
    net = hydra.utils.instantiate(net_config(cfg)).eval()  # plain CPU network, as exported
    row: dict[str, Any] = {"model": name, "image_size": size}
    try:
        path = export_onnx(net, size, work / f"{name}.onnx")
        session = ort_session(path)
    except Exception as e:  # an exporter failure is a finding to report, not a crash
        message = (str(e).strip().splitlines() or [""])[0][:200]
        return {**row, "error": f"{type(e).__name__}: {message}"}
    check = parity(net, session, torch.rand(2, 3, size, size))
    return {**row, **latencies(net, session, size, runs), "max_abs_diff": check["max_abs_diff"]}


# ---------------------------------------------------------------------------------------------
# Report


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
        f"torch {env['torch']}, {env['device_name']}, {env['threads']} threads; data: "
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
            f"Input pipeline, one process, {pipe['samples']} samples:",
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


# ---------------------------------------------------------------------------------------------
# Driver


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
        if base_cfg.model.get("channels_last"):
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


def onnx_row(cfg: DictConfig, name: str, work: Path, runs: int) -> dict[str, Any]:
    try:
        from petseg.export import require_onnx

        require_onnx()
    except PetsegError as e:
        return {"model": name, "error": f"n/a: {e}"}
    return bench_onnx(cfg, name, work, runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
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


if __name__ == "__main__":
    main()
