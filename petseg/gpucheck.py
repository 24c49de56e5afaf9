"""`python -m petseg.gpucheck` (`make gpu-check`): every GPU path of petseg in one prepared run.

For a GPU lent for a few minutes: stages data, epoch, throughput, checks and compile, in that
order, each with its own time cap inside one `--budget`; a stage that does not fit is `skipped`,
not failed. Writes outputs/gpu-check/latest.json and latest.md after every item; exits 1 on a
failed check. Without a GPU it runs `--dry-run` (CPU, tiny sizes) into dry-run.json. A module,
not a tools/ script: it imports petseg's builders as the other CLIs do and runs from any folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from petseg.atomic import atomic_open
from petseg.build import build, build_module, build_trainer
from petseg.callbacks import DataWait
from petseg.config import CONF_DIR, compose_run
from petseg.data.layout import user_cache_dir
from petseg.flops import mult_adds

log = logging.getLogger("petseg.gpucheck")
START = time.monotonic()
ROOT = CONF_DIR.parent

# Dense bf16 tensor-core peaks in TFLOP/s by device-name substring, first match wins (datasheets).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100", 989.4),  # SXM
    ("H800", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
)
# model choice -> its overrides (smp: random init, nothing is downloaded).
MODELS = {
    "segnet_dsc": ["model=segnet_dsc"],
    "unet": ["model=unet"],
    "vit": ["model=vit"],
    "segformer": ["model=segformer"],
    "smp_unet_resnet34": ["model=smp_unet_resnet34", "model.encoder_weights=null"],
}
VARIANTS = {"eager": [], "channels_last": ["perf.channels_last=true"]}
COMPILED = "compile+channels_last"
# Compiled vs eager logits (eval, same weights and input): relative Frobenius error
# ||c - e|| / ||e||. bf16 rounds to ~0.4% per op and inductor fuses ops in fp32, over ~25 layers
# a few % apart; a broken graph is O(1) off. The dry run compiles with the eager backend: exact.
COMPILE_RTOL = {"bf16-mixed": 0.1, "32-true": 1e-3}
FUSED_ATOL = 1e-5  # max |fused - unfused| parameter difference after 10 Adam steps at lr 1e-3
AUGMENT_TOL = {"flip_rate": 0.1, "jitter_rate": 0.1, "ratio_mean": 0.03, "ratio_std": 0.03}


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""

    trainval: int = 3680
    test: int = 64  # the epoch stage reads trainval only; the test list must exist
    width: int = 500
    height: int = 375
    image_size: int = 128
    batch_size: int = 64  # throughput fits; the epoch stage keeps the config's data.batch_size
    warmup_steps: int = 5
    measured_steps: int = 25
    precision: str = "bf16-mixed"
    compile: str = "true"  # perf.compile: inductor
    workers: str = "auto"
    augment_draws: int = 512
    caps: tuple[tuple[str, float], ...] = (
        ("data", 90.0),
        ("epoch", 70.0),
        ("throughput", 80.0),
        ("checks", 30.0),
        ("compile", 200.0),
    )
    compile_estimate_s: float = 35.0  # start a compiled fit only with this much of its cap left
    variant_models: tuple[str, ...] = tuple(MODELS)  # models fitted channels_last and compiled
    model_overrides: tuple[tuple[str, str], ...] = ()  # (model, override): smaller in the dry run
    subprocesses: bool = True  # the ddp run and the gpu_pool sweep (python -m petseg.train)


DRY = Sizes(
    trainval=24, test=4, width=64, height=48, image_size=32, batch_size=4, warmup_steps=1,
    measured_steps=1, precision="32-true", compile="eager", workers="0", augment_draws=256,
    compile_estimate_s=0.0, variant_models=("segnet_dsc",),
    model_overrides=(("unet", "model.base_width=8"), ("vit", "model.depth=1"),
                     ("vit", "model.embed_dim=64"), ("vit", "model.num_heads=2"),
                     ("segformer", "model.depths=[1,1,1,1]"),
                     ("smp_unet_resnet34", "model.encoder_name=resnet18")),
)  # fmt: skip


def peak_bf16_tflops(name: str) -> float | None:
    """The GPU's dense bf16 peak from PEAK_BF16_TFLOPS; None for a device not in the table."""
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak
    return None


def achieved_tflops(mult_adds_per_image: int, images_per_s: float) -> float:
    """Training FLOP/s in TFLOP/s: 2 FLOPs per mult-add, ~3 forwards' work per trained image."""
    return 6.0 * mult_adds_per_image * images_per_s / 1e12


# --- the generated dataset ---------------------------------------------------------------


def write_samples(base: str, first: int, stop: int, width: int, height: int, seed: int) -> None:
    """Samples first..stop-1: petseg's synthetic pets, drawn square, resized to width x height."""
    import cv2
    import numpy as np
    from PIL import Image

    from petseg.data.layout import sample_paths
    from petseg.data.synthetic import make_sample

    cv2.setNumThreads(1)  # one process per core already
    for i in range(first, stop):
        image, trimap = make_sample(np.random.default_rng([seed, i]), max(width, height))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        trimap = cv2.resize(trimap, (width, height), interpolation=cv2.INTER_NEAREST)
        image_path, trimap_path = sample_paths(Path(base), f"gpucheck_{i + 1}")
        Image.fromarray(image).save(image_path, quality=90)
        Image.fromarray(trimap, mode="L").save(trimap_path)


def ensure_dataset(root: Path, sizes: Sizes, seed: int = 0) -> tuple[Path, bool]:
    """(<root>/oxford-iiit-pet, whether it was made now): made once per parameter set, in
    parallel processes, atomically (a cut run leaves no half dataset)."""
    from petseg.data.layout import BASE_FOLDER, IMAGES, TRIMAPS, split_path

    base = root / BASE_FOLDER
    params = {"trainval": sizes.trainval, "test": sizes.test, "width": sizes.width,
              "height": sizes.height, "seed": seed}  # fmt: skip
    stamp = base / "gpucheck.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return base, False
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gpucheck-", dir=root))
    try:
        out = tmp / BASE_FOLDER
        (out / IMAGES).mkdir(parents=True)
        (out / TRIMAPS).mkdir(parents=True)
        total = sizes.trainval + sizes.test
        procs = max(1, min(16, (os.cpu_count() or 1) - 2))
        chunk = max(1, math.ceil(total / (procs * 4)))
        # spawn: a fork of a process with live threads (W&B, torch) can deadlock in the child.
        with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
            shape = (sizes.width, sizes.height, seed)
            stops = [(a, min(a + chunk, total)) for a in range(0, total, chunk)]
            jobs = [pool.submit(write_samples, str(out), a, b, *shape) for a, b in stops]
            for job in jobs:
                job.result()
        names = [f"gpucheck_{i + 1} 1 1 1" for i in range(total)]
        split_path(out, "trainval").write_text("\n".join(names[: sizes.trainval]) + "\n")
        split_path(out, "test").write_text("\n".join(names[sizes.trainval :]) + "\n")
        (out / "gpucheck.json").write_text(json.dumps(params))
        if base.exists():
            shutil.rmtree(base)
        out.rename(base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return base, True


# --- composing and timing fits -----------------------------------------------------------


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(L.Callback):
    """Images/s over the steps after `warmup` (the first ones hold compile and cudnn autotuning),
    the first step's time, and every step's loss (checked finite at the end, one sync)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.losses: list[torch.Tensor] = []
        self.started = self.t0 = self.t1 = 0.0
        self.first_step_s = 0.0
        self.images = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        if i == 0:
            self.started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            self.losses.append(loss.detach().float())
        if i > 0 and i >= self.warmup:
            self.images += int(batch["image"].shape[0])
        last = i + 1 == trainer.num_training_batches
        if i == 0 or i + 1 == self.warmup or last:
            sync()
            now = time.perf_counter()
            if i == 0:
                self.first_step_s = now - self.started
            if i + 1 == self.warmup:
                self.t0 = now
            if last:
                self.t1 = now

    @property
    def images_per_s(self) -> float | None:
        seconds = self.t1 - self.t0
        return self.images / seconds if self.images and seconds > 0 else None

    def finite(self) -> bool:
        return bool(self.losses) and bool(torch.stack(self.losses).isfinite().all())


def quiet_trainer(cfg: DictConfig, callbacks: list[L.Callback], **options: Any) -> L.Trainer:
    """cfg's Trainer (precision resolved) with the given callbacks; no loggers or checkpoints."""
    return build_trainer(
        cfg, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        **options,
    )  # fmt: skip


def metric(trainer: L.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return float(value) if value is not None else None


def peak_memory_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


# --- the report --------------------------------------------------------------------------


class Report:
    """The run's results, written (JSON and Markdown) after each item; thread-safe for the
    watchdog that marks the unfinished stages skipped when the budget runs out."""

    def __init__(self, out: Path, stem: str, info: dict[str, Any]) -> None:
        self.json_path, self.md_path = out / f"{stem}.json", out / f"{stem}.md"
        self.lock = threading.RLock()
        self.data: dict[str, Any] = {**info, "stages": {}, "checks": [], "epochs": [],
                                     "throughput": []}  # fmt: skip

    def stage(self, name: str, status: str, **extra: Any) -> None:
        with self.lock:
            self.data["stages"][name] = {"status": status, **extra}
            self.write()

    def check(self, name: str, passed: bool | None, detail: str = "") -> None:
        """passed None: skipped."""
        status = "skipped" if passed is None else ("passed" if passed else "failed")
        with self.lock:
            self.data["checks"].append({"name": name, "status": status, "detail": detail})
            (log.info if passed is not False else log.error)("%s: %s %s", name, status, detail)
            self.write()

    def add(self, table: str, row: dict[str, Any]) -> None:
        with self.lock:
            self.data[table].append(row)
            self.write()

    @property
    def failed(self) -> list[str]:
        stages = [k for k, v in self.data["stages"].items() if v["status"] == "failed"]
        return stages + [c["name"] for c in self.data["checks"] if c["status"] == "failed"]

    def write(self) -> None:
        with self.lock:
            self.data["elapsed_s"] = round(time.monotonic() - START, 1)
            self.data["ok"] = not self.failed
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(self.json_path, "w") as f:
                json.dump(self.data, f, indent=2, default=str)
            with atomic_open(self.md_path, "w") as f:
                f.write(markdown(self.data))


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(data: dict[str, Any]) -> str:
    """The report as Markdown tables: throughput, epoch, checks, stages."""
    lines = [
        f"gpu-check {data['date']} on {data['device']} (torch {data['torch']}, "
        f"{data['precision']}, {data['image_size']} px){' DRY RUN' if data['dry_run'] else ''}",
        "",
        "| model | variant | batch | images/s | TFLOP/s | of bf16 peak | peak mem GiB "
        "| data wait | first step s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["throughput"]:
        frac = r.get("peak_fraction")
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['batch_size']} | {fmt(r['images_per_s'])} "
            f"| {fmt(r['tflops'], 2)} | {fmt(frac * 100 if frac is not None else None)}% "
            f"| {fmt(r['peak_mem_gib'], 2)} | {fmt(r['data_wait_frac'], 3)} "
            f"| {fmt(r['first_step_s'])} |"
        )
    head = "| epoch (segnet_dsc) | images | setup s | cache build s | first batch s | data wait s"
    lines += ["", head + " | steps s | fit s | images/s | data wait |", "|---|" + "---|" * 9]
    for r in data["epochs"]:
        lines.append(
            f"| {r['cache']} | {r['images']} | {fmt(r['setup_s'])} | {fmt(r['cache_build_s'])} "
            f"| {fmt(r['first_batch_s'])} | {fmt(r['data_wait_s'])} | {fmt(r['steps_s'])} "
            f"| {fmt(r['fit_s'])} | {fmt(r['images_per_s'])} | {fmt(r['data_wait_frac'], 3)} |"
        )
    lines += ["", "| check | status | detail |", "|---|---|---|"]
    lines += [f"| {c['name']} | {c['status']} | {c['detail']} |" for c in data["checks"]]
    lines += ["", "| stage | status | seconds |", "|---|---|---|"]
    lines += [
        f"| {k} | {v['status']} | {fmt(v.get('seconds'))} |" for k, v in data["stages"].items()
    ]
    return "\n".join(lines) + "\n"


# --- the stages ----------------------------------------------------------------------------


class GpuCheck:
    """One run of every stage; `deadline` is the monotonic time by which everything has stopped."""

    def __init__(self, sizes: Sizes, dry_run: bool, work: Path, data_root: Path,
                 report: Report, deadline: float) -> None:  # fmt: skip
        self.sizes, self.dry_run, self.work = sizes, dry_run, work
        self.data_root, self.report, self.deadline = data_root, report, deadline
        self.device = torch.device("cuda" if not dry_run else "cpu")
        self.peak = report.data["peak_bf16_tflops"]
        self.procs: dict[str, tuple[subprocess.Popen, Path, float]] = {}
        self.stage_end = deadline
        # One datamodule for every throughput fit: one setup, one cache check (same data, batch).
        self.datamodule: Any = None

    def left(self) -> float:
        return min(self.stage_end, self.deadline) - time.monotonic()

    def base_overrides(self) -> list[str]:
        s = self.sizes
        return [
            f"paths.root_dir={self.work}", f"data.root={self.data_root}", "data.download=false",
            f"data.image_size={s.image_size}", f"trainer.precision={s.precision}",
            f"data.num_workers={s.workers}", "logger=none", "callbacks=none",
            f"trainer.accelerator={self.device.type if self.dry_run else 'gpu'}",
            "trainer.devices=1",
        ]  # fmt: skip

    def run(self) -> None:
        for name, cap in self.sizes.caps:
            now = time.monotonic()
            if now >= self.deadline:
                self.report.stage(name, "skipped", reason="time budget spent")
                continue
            self.stage_end = min(now + cap, self.deadline)
            self.report.stage(name, "running")
            try:
                getattr(self, f"stage_{name}")()
            except Exception as e:  # a bug or a broken GPU path: the stage fails, the rest run
                log.error("stage %s failed:\n%s", name, traceback.format_exc())
                self.report.stage(name, "failed", seconds=time.monotonic() - now,
                                  error=" ".join(repr(e).split())[:400])  # fmt: skip
                continue
            self.report.stage(name, "done", seconds=round(time.monotonic() - now, 1))
        self.join_subprocesses(final=True)

    # data: the dataset, and the two subprocess runs started meanwhile
    def stage_data(self) -> None:
        if self.sizes.subprocesses:
            self.start_subprocesses()
        else:
            self.report.check("ddp_1gpu, gpu_pool_2jobs", None, "subprocesses off")
        t = time.monotonic()
        base, made = ensure_dataset(self.data_root, self.sizes)
        self.base = base
        self.report.check("dataset", True, f"{self.sizes.trainval} trainval "
                          f"{self.sizes.width}x{self.sizes.height} JPEGs, "
                          f"{'made' if made else 'cached'} in {time.monotonic() - t:.1f} s "
                          f"({base})")  # fmt: skip
        self.join_subprocesses()  # their GPU work must not overlap the timed stages

    def subprocess_overrides(self) -> list[str]:
        from petseg.data.synthetic import ensure_synthetic

        root = self.work / "synthetic"
        ensure_synthetic(root, num_trainval=32, num_test=8, size=64)  # once, before 2 readers
        device = ["trainer.accelerator=cpu"] if self.dry_run else []
        return [
            "data=synthetic", f"data.root={root}", "data.synthetic.num_trainval=32",
            "data.synthetic.num_test=8", "data.synthetic.size=64", "data.image_size=64",
            "data.batch_size=8", "data.num_workers=1", "model=segnet_dsc",
            "trainer.max_epochs=1", "test=false", "logger=csv",
            f"trainer.precision={self.sizes.precision}", *device,
        ]  # fmt: skip

    def start_subprocesses(self) -> None:
        common = self.subprocess_overrides()
        ddp_dir, pool_dir = self.work / "ddp", self.work / "gpu_pool"
        for d in (ddp_dir, pool_dir):
            shutil.rmtree(d, ignore_errors=True)
        cpu_ddp = ["trainer.sync_batchnorm=false"] if self.dry_run else []
        ddp = ["trainer=ddp", "trainer.devices=1", *common, *cpu_ddp, f"hydra.run.dir={ddp_dir}"]
        pool = ["-m", "hydra/launcher=gpu_pool", "hydra.launcher.n_jobs=2", "seed=1,2", *common]
        runs = {
            "ddp_1gpu": (ddp, ddp_dir),
            "gpu_pool_2jobs": ([*pool, f"hydra.sweep.dir={pool_dir}"], pool_dir),
        }
        env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
        env.pop("PETSEG_NUM_GPUS", None)
        for name, (args, folder) in runs.items():
            folder.mkdir(parents=True, exist_ok=True)
            out = open(folder.parent / f"{name}.log", "w")  # noqa: SIM115 (the child writes it)
            cmd = [sys.executable, "-m", "petseg.train", *args]
            out.write(" ".join(cmd) + "\n")
            out.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            self.procs[name] = (proc, folder, time.monotonic())

    def join_subprocesses(self, final: bool = False) -> None:
        from petseg.run_status import read_status

        for name, (proc, folder, started) in list(self.procs.items()):
            try:
                rc = proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                self.report.check(name, None, "cut by the time budget")
                del self.procs[name]
                continue
            seconds = time.monotonic() - started
            del self.procs[name]
            statuses = [read_status(p.parent)["status"] for p in folder.glob("**/status.json")]
            want = 2 if name.startswith("gpu_pool") else 1
            ok = rc == 0 and statuses.count("completed") == want
            logfile = folder.parent / f"{name}.log"
            tail = "" if ok else " | " + " ".join(logfile.read_text()[-300:].split())
            self.report.check(name, ok, f"rc {rc}, {statuses.count('completed')}/{want} runs "
                              f"completed in {seconds:.0f} s ({logfile}){tail}")  # fmt: skip

    def kill_subprocesses(self) -> None:
        for proc, _, _ in self.procs.values():
            proc.kill()

    # epoch: one full epoch of segnet_dsc, cold then warm decoded cache
    def stage_epoch(self) -> None:
        from petseg.data.cache import cache_root

        for cache in ("cold", "warm"):
            if cache == "cold":
                shutil.rmtree(cache_root(self.base), ignore_errors=True)
            cfg = compose_run([*self.base_overrides(), "model=segnet_dsc"],
                              self.work / f"epoch-{cache}")  # fmt: skip
            datamodule = build(cfg.data)
            t = time.perf_counter()
            datamodule.prepare_data()
            datamodule.setup("fit")
            setup_s = time.perf_counter() - t
            manifests = list(cache_root(self.base).glob("trainval-*/manifest.json"))
            built = json.loads(manifests[0].read_text()).get("seconds") if manifests else None
            module = build_module(cfg)
            wait, timer = DataWait(warn_above=None), StepTimer(warmup=1)
            trainer = quiet_trainer(cfg, [wait, timer], max_epochs=1)
            t = time.perf_counter()
            trainer.fit(module, datamodule=datamodule)
            sync()
            fit_s = time.perf_counter() - t
            images = len(datamodule.train_set)
            self.report.add("epochs", {
                "cache": cache, "images": images, "batch_size": int(cfg.data.batch_size),
                "setup_s": setup_s, "cache_build_s": built if cache == "cold" else None,
                "first_batch_s": wait.first_wait, "data_wait_s": wait.wait, "steps_s": wait.step,
                "fit_s": fit_s, "images_per_s": wait.images / (wait.wait + wait.step),
                "data_wait_frac": metric(trainer, "perf/data_wait_frac"),
                "val_and_startup_s": fit_s - wait.first_wait - wait.wait - wait.step,
            })  # fmt: skip
            self.report.check(f"epoch_{cache}_finite_loss", timer.finite(), f"{images} images")

    # throughput: short fits per model and variant
    def fit_row(self, model: str, variant: str, extra: list[str]) -> tuple[Any, DictConfig]:
        s = self.sizes
        smaller = [o for m, o in s.model_overrides if m == model]
        overrides = [*self.base_overrides(), *MODELS[model], *extra, *smaller]
        cfg = compose_run([*overrides, f"data.batch_size={s.batch_size}"], self.work / model)
        if self.datamodule is None:
            self.datamodule = build(cfg.data)
        module = build_module(cfg)
        size = s.image_size
        macs = mult_adds(module.net, torch.zeros(1, 3, size, size))
        module.net.train()
        wait, timer = DataWait(warn_above=None), StepTimer(s.warmup_steps)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer = quiet_trainer(
            cfg, [wait, timer], max_epochs=1, limit_val_batches=0, benchmark=not self.dry_run,
            limit_train_batches=s.warmup_steps + s.measured_steps,
        )  # fmt: skip
        trainer.fit(module, datamodule=self.datamodule)
        sync()
        ips = timer.images_per_s
        tflops = achieved_tflops(macs, ips) if ips else None
        optimizer = trainer.optimizers[0]
        row = {
            "model": model, "variant": variant, "batch_size": s.batch_size,
            "images_per_s": ips, "mult_adds": macs, "tflops": tflops,
            "peak_fraction": tflops / self.peak if tflops and self.peak else None,
            "peak_mem_gib": peak_memory_gib(),
            "data_wait_frac": metric(trainer, "perf/data_wait_frac"),
            "first_step_s": timer.first_step_s, "fused_adam": bool(optimizer.defaults.get("fused")),
        }  # fmt: skip
        self.report.add("throughput", row)
        self.report.check(f"{model}/{variant}: finite {s.precision} loss", timer.finite(),
                          f"{len(timer.losses)} steps")  # fmt: skip
        return module, cfg

    def stage_throughput(self) -> None:
        for variant, extra in VARIANTS.items():
            for model in MODELS if variant == "eager" else self.sizes.variant_models:
                if self.left() <= 0:
                    self.report.check(f"{model}/{variant}", None, "stage time cap reached")
                    continue
                self.fit_row(model, variant, extra)
        rows = [r for r in self.report.data["throughput"] if r["variant"] == "eager"]
        if rows and not self.dry_run:
            fused = all(r["fused_adam"] for r in rows)
            self.report.check("SegModule picks fused Adam on CUDA", fused, "")

    # checks: fused Adam and gpu_augment statistics
    def stage_checks(self) -> None:
        self.check_fused_adam()
        self.check_gpu_augment()

    def check_fused_adam(self) -> None:
        """Fused vs the for-loop Adam on the same parameters and gradients, 10 steps."""
        cfg = compose_run([*self.base_overrides(), "model=segnet_dsc"], self.work / "adam")
        torch.manual_seed(0)
        net = build(cfg.model).to(self.device)
        copies = [[torch.nn.Parameter(p.detach().clone()) for p in net.parameters()]
                  for _ in range(2)]  # fmt: skip
        fused = torch.optim.Adam(copies[0], lr=1e-3, fused=True)
        plain = torch.optim.Adam(copies[1], lr=1e-3, fused=False, foreach=False)
        gen = torch.Generator(self.device).manual_seed(0)
        for _ in range(10):
            for a, b in zip(*copies, strict=True):
                a.grad = torch.randn(a.shape, device=self.device, generator=gen)
                b.grad = a.grad.clone()
            fused.step()
            plain.step()
        diff = max(float((a - b).abs().max()) for a, b in zip(*copies, strict=True))
        self.report.check("fused Adam = unfused", diff <= FUSED_ATOL,
                          f"max |diff| {diff:.2e} <= {FUSED_ATOL:g} after 10 steps")  # fmt: skip

    def check_gpu_augment(self) -> None:
        """Flip rate, jitter rate and the brightness ratio's mean and std: CPU path vs device."""
        over = [*self.base_overrides(), "model=segnet_dsc"]
        cpu_dm = build(compose_run(over, self.work / "aug").data)
        dev_dm = build(compose_run([*over, "data.gpu_augment=true"], self.work / "aug").data)
        for dm in (cpu_dm, dev_dm):
            dm.setup("fit")
        n, count = self.sizes.augment_draws, len(cpu_dm.train_set)
        plain = [dev_dm.train_set[i % count] for i in range(n)]  # no flip/jitter on the CPU
        image = torch.stack([p["image"] for p in plain])
        mask = torch.stack([p["mask"] for p in plain])
        cpu = [cpu_dm.train_set[(i % count, 1000 + i)] for i in range(n)]
        cpu_stats = augment_stats(image, mask, torch.stack([c["image"] for c in cpu]),
                                  torch.stack([c["mask"] for c in cpu]))  # fmt: skip
        gen = torch.Generator(self.device).manual_seed(0)
        assert dev_dm.device_augment is not None
        out = dev_dm.device_augment(
            {"image": image.to(self.device), "mask": mask.to(self.device)}, gen
        )
        dev_stats = augment_stats(image, mask, out["image"].cpu(), out["mask"].cpu())
        gaps = {k: abs(cpu_stats[k] - dev_stats[k]) for k in AUGMENT_TOL}
        ok = all(gaps[k] <= tol for k, tol in AUGMENT_TOL.items())
        detail = ", ".join(f"{k} {cpu_stats[k]:.3f} vs {dev_stats[k]:.3f} (tol {AUGMENT_TOL[k]})"
                           for k in AUGMENT_TOL)  # fmt: skip
        self.report.check(f"data.gpu_augment = CPU path ({n} draws, {self.device.type})", ok,
                          detail)  # fmt: skip

    # compile: the fits again with perf.compile + channels_last; compiled vs eager logits
    def stage_compile(self) -> None:
        extra = [f"perf.compile={self.sizes.compile}", "perf.channels_last=true"]
        for model in self.sizes.variant_models:
            if self.left() < self.sizes.compile_estimate_s:
                self.report.check(f"{model}/{COMPILED}", None, "stage time cap reached")
                continue
            module, cfg = self.fit_row(model, COMPILED, extra)
            self.compare_compiled(model, module, cfg)

    def compare_compiled(self, model: str, module: Any, cfg: DictConfig) -> None:
        eager = build(cfg.model)
        eager.load_state_dict(module.net.state_dict())
        eager.to(self.device, memory_format=torch.channels_last).eval()
        module.eval()
        size = self.sizes.image_size
        x = torch.rand(4, 3, size, size, device=self.device, generator=torch.Generator(
            self.device).manual_seed(0))  # fmt: skip
        dtype = torch.bfloat16 if self.sizes.precision == "bf16-mixed" else None
        with torch.no_grad(), torch.autocast(self.device.type, dtype, enabled=dtype is not None):
            compiled = module(x).float()
            reference = eager(x.contiguous(memory_format=torch.channels_last)).float()
        rel = float((compiled - reference).norm() / reference.norm().clamp_min(1e-12))
        agree = float((compiled.argmax(1) == reference.argmax(1)).float().mean())
        tol = COMPILE_RTOL[self.sizes.precision]
        self.report.check(f"{model}: compiled = eager logits", rel <= tol,
                          f"rel error {rel:.2e} <= {tol:g}, argmax agrees {agree:.1%}")  # fmt: skip


def augment_stats(
    image: torch.Tensor, mask: torch.Tensor, out: torch.Tensor, out_mask: torch.Tensor
) -> dict[str, float]:
    """Flip rate (masks equal to the flipped input's), jitter rate (images changed beyond the
    flip by > 2/255) and the mean and std of each image's mean-intensity ratio, out over in."""
    flipped = (out_mask == mask.flip(-1)).flatten(1).all(1)
    same = (out_mask == mask).flatten(1).all(1)
    decisive = flipped ^ same  # a symmetric mask tells nothing
    base = torch.where(flipped.view(-1, 1, 1, 1), image.flip(-1), image)
    changed = (out - base).abs().flatten(1).amax(1) > 2 / 255
    ratio = out.flatten(1).mean(1) / base.flatten(1).mean(1).clamp_min(1e-3)
    d = decisive
    return {
        "flip_rate": float(flipped[d].float().mean()),
        "jitter_rate": float(changed[d].float().mean()),
        "ratio_mean": float(ratio[d].mean()),
        "ratio_std": float(ratio[d].std()),
    }


def device_info(dry_run: bool) -> dict[str, Any]:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() and not dry_run else "CPU"
    return {
        "device": name,
        "peak_bf16_tflops": peak_bf16_tflops(name) if name != "CPU" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),  # noqa: UP017
        "tflops_formula": "6 x mult-adds per image (petseg.flops, 1 forward) x images/s / 1e12",
    }


def run_check(
    dry_run: bool, out: Path, data_root: Path | None = None, budget_s: float = 320.0,
    sizes: Sizes | None = None, watchdog: bool = True,
) -> Report:  # fmt: skip
    """Every stage within budget_s of the module's import (the process start); the report."""
    sizes = sizes or (DRY if dry_run else Sizes())
    work = out / ("dry-run-work" if dry_run else "work")
    data_root = data_root or user_cache_dir() / ("gpu-check-dry" if dry_run else "gpu-check-data")
    info = {**device_info(dry_run), "dry_run": dry_run, "budget_s": budget_s,
            "precision": sizes.precision, "image_size": sizes.image_size,
            "sizes": asdict(sizes)}  # fmt: skip
    report = Report(out, "dry-run" if dry_run else "latest", info)
    deadline = START + budget_s
    check = GpuCheck(sizes, dry_run, work, data_root, report, deadline)
    timer = None
    if watchdog:  # a stage stuck past the budget (e.g. one long compile): stop the process
        timer = threading.Timer(max(0.0, deadline + 10 - time.monotonic()),
                                lambda: stop_at_budget(report, check))  # fmt: skip
        timer.daemon = True
        timer.start()
    try:
        check.run()
    finally:
        if timer is not None:
            timer.cancel()
    return report


def stop_at_budget(report: Report, check: GpuCheck) -> None:
    """The budget is spent mid-stage: mark what did not finish skipped, write, exit now."""
    with report.lock:
        check.kill_subprocesses()
        for name, _ in check.sizes.caps:
            stage = report.data["stages"].get(name)
            if stage is None or stage["status"] == "running":
                report.data["stages"][name] = {"status": "skipped", "reason": "time budget spent"}
        report.write()
    print(summary_line(report), flush=True)
    os._exit(1 if report.failed else 0)


def summary_line(report: Report) -> str:
    failed = report.failed
    verdict = f"FAILED: {', '.join(failed)}" if failed else "all checks passed"
    return f"gpu-check: {verdict}; report {report.md_path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m petseg.gpucheck",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, fp32")
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu-check"))
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the generated dataset lives (default: the user cache)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=320.0,
        help="seconds from the start by which every stage has stopped",
    )
    args = parser.parse_args(argv)  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("WANDB_MODE", "disabled")
    dry_run = args.dry_run
    if not dry_run and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine; running the CPU dry run instead", flush=True)
        dry_run = True
    report = run_check(dry_run, args.out.resolve(), args.data_dir, args.budget)
    print(summary_line(report), flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
