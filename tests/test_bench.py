"""petseg.bench on tiny settings, and the speed switches it measures: channels_last, compile
(checkpoints load either way), fused Adam on CUDA, the confusion matrix's ignored-pixel class."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import warnings
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from petseg import bench
from petseg.module import SegModule, strip_compile_prefix, use_fused
from petseg.train import build_module

from conftest import TINY, quiet_trainer

# A 2-conv network from torch's own modules: compiles in seconds, not the minutes of a SegNet.
TWO_CONV = {
    "_target_": "torch.nn.Sequential",
    "_args_": [
        {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3,
         "padding": 1},
        {"_target_": "torch.nn.ReLU"},
        {"_target_": "torch.nn.Conv2d", "in_channels": 4, "out_channels": 3, "kernel_size": 1},
    ],
}  # fmt: skip
CE = {"_target_": "torch.nn.CrossEntropyLoss"}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}


def positive_finite(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def cache_available() -> bool:
    try:
        from petseg.data.cache import ensure_cache  # noqa: F401
    except ImportError:
        return False
    return True


def fit(module: SegModule, steps: int = 2, size: int = 16, **trainer_args: object) -> L.Trainer:
    """`steps` training steps on random in-memory batches, nothing else."""
    torch.manual_seed(0)
    batches = [
        {"image": torch.rand(2, 3, size, size), "mask": torch.randint(0, 3, (2, size, size))}
        for _ in range(steps)
    ]
    trainer = quiet_trainer(None, max_steps=steps, limit_val_batches=0, **trainer_args)
    trainer.fit(module, train_dataloaders=bench.InMemory(batches))
    return trainer


# --- the bench -----------------------------------------------------------------------------------


def test_bench_tiny_run_writes_positive_figures(tmp_path: Path, one_thread) -> None:
    result = bench.run(
        overrides=["data.image_size=32"],
        models=["segnet_dsc"],
        batch=2,
        steps=2,
        warmup=1,
        rounds=1,
        precisions=["32"],
        samples=4,
        data="synthetic",
        skip=["onnx"],
        out=tmp_path,
    )
    written = json.loads((tmp_path / "latest.json").read_text())
    assert {"pipeline_cache_vs_decode", "step_lightning_vs_plain", "pipeline", "step"} <= set(
        written
    )
    assert positive_finite(written["step_lightning_vs_plain"])
    if cache_available():  # a cache that is there must be measured, not "n/a"
        assert positive_finite(written["pipeline_cache_vs_decode"]), written["pipeline"]["cache"]
    else:
        assert written["pipeline_cache_vs_decode"] is None
    assert positive_finite(written["pipeline"]["decode_samples_per_s"])
    step = written["step"]
    assert len(step["plain_step_s"]) == len(step["lightning_step_s"]) == 2  # rounds x steps
    for key in ("plain_images_per_s", "lightning_images_per_s", "ratio_median_step"):
        assert positive_finite(step[key]), key
    (row,) = written["models"]
    assert row["model"] == "segnet_dsc" and row["image_size"] == 32
    for key in ("images_per_s", "mult_adds_g", "tflops"):
        assert positive_finite(row[key]), key
    assert result["step"]["ratio"] == written["step_lightning_vs_plain"]
    table = (tmp_path / "latest.md").read_text()
    assert "| train step: Lightning / plain loop (images/s) |" in table
    assert "| segnet_dsc | 32 | 2 |" in table


def test_bench_rejects_unknown_names(tmp_path: Path) -> None:
    from petseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown.*nosuchnet"):
        bench.run(models=["nosuchnet"], out=tmp_path)
    with pytest.raises(ConfigError, match="--skip"):
        bench.run(skip=["everything"], out=tmp_path)


def test_lightning_timer_sees_every_step_after_warmup(one_thread) -> None:
    module = SegModule(net=TWO_CONV, loss=CE, optimizer=ADAM)
    batches = [
        {"image": torch.rand(2, 3, 16, 16), "mask": torch.randint(0, 3, (2, 16, 16))}
        for _ in range(5)
    ]
    twin = SegModule(net=TWO_CONV, loss=CE, optimizer=ADAM)
    cpu = torch.device("cpu")
    lightning = bench.lightning_step_seconds(module, batches, 2, "32", cpu)
    plain = bench.PlainLoop.of(twin, "bf16-mixed", cpu).seconds(batches, 2)
    paired = bench.paired_step_seconds(module, twin, batches, 3, "32", cpu)
    assert len(lightning) == len(plain) == 3 and [len(s) for s in paired] == [2, 2]
    assert all(positive_finite(s) for s in [*lightning, *plain, *paired[0], *paired[1]])


@pytest.mark.slow
def test_bench_onnx_row(tmp_path: Path, one_thread) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    cfg = bench.compose_run([*TINY])
    row = bench.bench_onnx(cfg, "segnet_dsc", tmp_path, runs=2)
    assert "error" not in row, row.get("error")
    assert positive_finite(row["eager_ms"]) and positive_finite(row["onnxruntime_ms"])
    assert row["max_abs_diff"] < 1e-3


# --- fused Adam on CUDA --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("optimizer", "devices", "fused"),
    [
        (functools.partial(torch.optim.Adam, lr=1e-3), {"cuda"}, True),
        (functools.partial(torch.optim.AdamW, lr=1e-3), {"cuda"}, True),
        (functools.partial(torch.optim.Adam, lr=1e-3), {"cpu"}, False),
        (functools.partial(torch.optim.Adam, lr=1e-3), {"cpu", "cuda"}, False),
        (functools.partial(torch.optim.SGD, lr=1e-2), {"cuda"}, False),
        (functools.partial(torch.optim.Adam, fused=False), {"cuda"}, False),  # the user's choice
        (functools.partial(torch.optim.Adam, fused=None), {"cuda"}, True),  # = not set
        (functools.partial(torch.optim.Adam, foreach=True), {"cuda"}, False),  # exclusive
        (torch.optim.Adam, {"cuda"}, True),
    ],
)
def test_fused_only_for_adam_on_cuda(optimizer: object, devices: set[str], fused: bool) -> None:
    assert use_fused(optimizer, devices) is fused


def test_cpu_optimizer_is_not_fused(cfg_factory) -> None:
    cfg = cfg_factory(*TINY, "optimizer=adamw")
    optimizer = build_module(cfg).configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and not optimizer.defaults["fused"]


# --- channels_last -------------------------------------------------------------------------------


def test_channels_last_same_logits_and_trains(cfg_factory, one_thread) -> None:
    cfg = cfg_factory(*TINY, "perf.channels_last=true")
    torch.manual_seed(0)
    nhwc = build_module(cfg)
    nchw = SegModule(net=cfg.model, loss=cfg.loss, optimizer=cfg.optimizer)
    nchw.load_state_dict(nhwc.state_dict())
    conv = next(m for m in nhwc.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(nhwc.eval()(x), nchw.eval()(x), rtol=1e-4, atol=1e-4)
    fit(nhwc.train(), steps=1, size=32)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # kept by the optimizer


# --- compile: checkpoints load both ways ---------------------------------------------------------


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def compiled_checkpoints_load_both_ways(tmp_path: Path, backend: str, back: bool = True) -> None:
    compiled = SegModule(net=TWO_CONV, loss=CE, optimizer=ADAM, compile=backend)
    trainer = fit(compiled)
    assert compiled.net._compiled_call_impl is not None  # fit compiled it
    trainer.save_checkpoint(tmp_path / "compiled.ckpt")
    saved = torch.load(tmp_path / "compiled.ckpt", map_location="cpu", weights_only=False)
    assert all(k.startswith("net.") and "_orig_mod" not in k for k in saved["state_dict"])
    plain = SegModule.load_from_checkpoint(tmp_path / "compiled.ckpt")  # uncompiled by default
    assert plain.compile_backend is None
    assert_same_state(plain, compiled)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(x), plain.eval()(x), rtol=1e-4, atol=1e-5)

    if not back:
        return
    # ... and the other way: an uncompiled run's checkpoint resumes compiled.
    trainer = fit(plain.train())
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    resumed = SegModule.load_from_checkpoint(tmp_path / "plain.ckpt", compile=backend)
    assert_same_state(resumed, plain)
    fit(resumed, steps=1)
    assert resumed.net._compiled_call_impl is not None


def test_compile_eager_backend_checkpoints_load_both_ways(tmp_path: Path, one_thread) -> None:
    compiled_checkpoints_load_both_ways(tmp_path, "eager")  # graph capture only: quick


@pytest.mark.slow
def test_compile_inductor_checkpoint_loads_uncompiled(tmp_path: Path, one_thread) -> None:
    # One compile (~20-60 s on a 2-core CPU); loading into a compiled module is the eager test's.
    compiled_checkpoints_load_both_ways(tmp_path, "inductor", back=False)


def test_orig_mod_keys_load(tmp_path: Path) -> None:
    """A checkpoint written with `module.net = torch.compile(net)` still loads."""
    module = SegModule(net=TWO_CONV, loss=CE, optimizer=ADAM)
    with_prefix = {
        k.replace("net.", "net._orig_mod.", 1): v for k, v in module.state_dict().items()
    }
    assert strip_compile_prefix(with_prefix).keys() == module.state_dict().keys()
    trainer = fit(module, steps=1)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    checkpoint = torch.load(tmp_path / "a.ckpt", map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = {
        k.replace("net.", "net._orig_mod.", 1): v for k, v in checkpoint["state_dict"].items()
    }
    torch.save(checkpoint, tmp_path / "b.ckpt")
    assert_same_state(SegModule.load_from_checkpoint(tmp_path / "b.ckpt"), module)


def test_perf_switches_compose(cfg_factory) -> None:
    cfg = cfg_factory(*TINY, "perf.channels_last=true", "perf.compile=eager")
    module = build_module(cfg)
    assert module.channels_last and module.compile_backend == "eager"
    assert cfg.perf.channels_last and cfg.perf.compile == "eager"
    # Switches, not hyperparameters: neither the checkpoint's network config nor its hparams.
    assert "channels_last" not in module.hparams.net and "compile" not in module.hparams.net
    assert "channels_last" not in module.hparams and "compile" not in module.hparams
    assert type(module.net).__name__ == "SegNet"
    assert type(hydra.utils.instantiate(cfg.model)).__name__ == "SegNet"  # the node is the network
    inductor = build_module(cfg_factory(*TINY, "perf.compile=true"))
    assert inductor.compile_backend == "inductor"


# --- the confusion matrix's extra class for ignored pixels ---------------------------------------


@pytest.mark.parametrize("ignore_index", [-100, 2, 255])
def test_confusion_matrix_equals_torchmetrics_ignore_index(ignore_index: int) -> None:
    torch.manual_seed(0)
    net = {"_target_": "torch.nn.Identity"}  # logits = the "image"
    loss = {**CE, "ignore_index": ignore_index}
    module = SegModule(net=net, loss=loss, optimizer=ADAM, ignore_index=ignore_index)
    reference = MulticlassConfusionMatrix(3, ignore_index=ignore_index)
    for _ in range(3):
        logits = torch.randn(2, 3, 8, 8)
        mask = torch.randint(0, 3, (2, 8, 8))
        mask[0, :2] = ignore_index if ignore_index != 2 else mask[0, :2]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log without a trainer
            module._step({"image": logits, "mask": mask}, "val")
        reference.update(logits.max(1).indices, mask)
    ours = module.confmats["val_cm"].compute()[:3, :3]
    assert torch.equal(ours, reference.compute())


# --- train metrics on every N-th batch --------------------------------------------------------


def test_train_metrics_every_n_steps_counts_every_nth_batch() -> None:
    net = {"_target_": "torch.nn.Identity"}  # logits = the "image"
    module = SegModule(net=net, loss=CE, optimizer=ADAM, train_metrics_every_n_steps=2)
    batches = [
        {"image": torch.randn(2, 3, 4, 4), "mask": torch.randint(0, 3, (2, 4, 4))} for _ in range(5)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        losses = [module.training_step(b, i) for i, b in enumerate(batches)]
        for b in batches:
            module.validation_step(b, 0)
    assert all(torch.isfinite(loss) for loss in losses)  # the loss: every batch
    reference = MulticlassConfusionMatrix(3)
    for b in batches[::2]:  # batches 0, 2, 4
        reference.update(b["image"].max(1).indices, b["mask"])
    assert torch.equal(module.confmats["train_cm"].compute()[:3, :3], reference.compute())
    assert module.confmats["val_cm"].compute().sum() == 5 * 2 * 4 * 4  # val: every batch


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_train_metrics_every_n_steps_must_be_a_positive_int(every: object) -> None:
    from petseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"perf\.train_metrics_every_n_steps=.* integer >= 1"):
        SegModule(net=TWO_CONV, loss=CE, optimizer=ADAM, train_metrics_every_n_steps=every)


# --- precision ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "runs_as", "dtype"),
    [
        ([], "32-true", torch.float32),  # trainer/default.yaml
        (["trainer=cpu"], "bf16-mixed", torch.bfloat16),
        (["trainer.precision=bf16-mixed"], "bf16-mixed", torch.bfloat16),
        # No fp16 autocast on CPU: Lightning warns and runs bf16 (on a GPU it is fp16 + scaler).
        (["trainer.precision=16-mixed"], "bf16-mixed", torch.bfloat16),
    ],
)
def test_precision_switch_trains_on_cpu(
    cfg_factory, one_thread, overrides: list[str], runs_as: str, dtype: torch.dtype
) -> None:
    cfg = cfg_factory(*TINY, *overrides)
    module = build_module(cfg)
    dtypes: list[torch.dtype] = []
    module.net.register_forward_hook(lambda net, args, out: dtypes.append(out.dtype))
    fp16 = overrides == ["trainer.precision=16-mixed"]
    expect = pytest.warns(UserWarning, match="fp16 is not supported on CPU") if fp16 else None
    with expect or contextlib.nullcontext():
        trainer = fit(module, steps=3, size=32, precision=cfg.trainer.precision)
    assert trainer.precision == runs_as
    assert dtypes and set(dtypes) == {dtype}  # the network's logits, under autocast or not
    scores = trainer.callback_metrics
    assert math.isfinite(float(scores["train/loss_epoch"]))
    assert 0.0 <= float(scores["train/miou"]) <= 1.0  # metrics take bf16 logits as they are
