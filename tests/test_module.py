"""SegModule: its metrics over a split (an identity network, so a batch's "image" is its logits
and one-hot predictions written by hand go through the real Lightning loops), the confusion
matrix it writes, the best val/miou of a fit, the train loss and its NaN check, and the speed
switches (channels_last, compile, fused Adam, train_metrics_every_n_steps, precision)."""

from __future__ import annotations

import ast
import contextlib
import csv
import functools
import math
import warnings
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassConfusionMatrix

import petseg.module
from petseg.bench import InMemory
from petseg.losses import soft_iou
from petseg.module import SegModule, strip_compile_prefix
from petseg.optim import use_fused
from petseg.train import build_module

from conftest import TINY, quiet_trainer

PET, BG, BORDER = 0, 1, 2
NAMES = ["pet", "background", "border"]

# Batch A: a pet in the background; no border anywhere (target or prediction).
TARGET_A = [[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]]
PRED_A = [[1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1]]
# Batch B: a pet framed by border, one background pixel.
TARGET_B = [[2, 2, 2, 2], [2, 0, 0, 2], [2, 0, 0, 2], [2, 2, 2, 1]]
PRED_B = [[2, 2, 1, 2], [2, 0, 0, 0], [2, 0, 0, 2], [2, 2, 2, 1]]
# Rows target, cols pred, counted by hand from the grids above.
CM_A = [[3, 1, 0], [1, 11, 0], [0, 0, 0]]
CM_B = [[4, 0, 0], [0, 1, 0], [1, 1, 9]]

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
CONV = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 1}
IDENTITY = {"_target_": "torch.nn.Identity"}  # logits = the "image"
CE = {"_target_": "petseg.losses.CrossEntropyLoss"}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}


def batch(target: list[list[int]], pred: list[list[int]]) -> dict[str, torch.Tensor]:
    """One 1x4x4 batch whose 'image' is logits that argmax to `pred`."""
    logits = 4.0 * torch.nn.functional.one_hot(torch.tensor(pred), 3).permute(2, 0, 1).float()
    return {"image": logits[None], "mask": torch.tensor(target)[None]}


def identity_module(article: bool = False) -> SegModule:
    return SegModule(
        net=IDENTITY, loss=CE, optimizer=SGD, class_names=NAMES, article_protocol=article
    )


def conv_module() -> SegModule:
    """A 1x1 conv network: trainable, cheap."""
    return SegModule(net=CONV, loss=CE, optimizer=SGD, class_names=NAMES)


def make_trainer(root: Path, logger=False) -> L.Trainer:
    return quiet_trainer(root, logger=logger)


def loader(*batches: dict[str, torch.Tensor]) -> DataLoader:
    return DataLoader(list(batches), batch_size=None)  # each item is already a batch


def fit_steps(
    module: SegModule, steps: int = 2, size: int = 16, **trainer_args: object
) -> L.Trainer:
    """`steps` training steps on random in-memory batches, nothing else."""
    torch.manual_seed(0)
    batches = [
        {"image": torch.rand(2, 3, size, size), "mask": torch.randint(0, 3, (2, size, size))}
        for _ in range(steps)
    ]
    trainer = quiet_trainer(None, max_steps=steps, limit_val_batches=0, **trainer_args)
    trainer.fit(module, train_dataloaders=InMemory(batches))
    return trainer


# --- public APIs only ----------------------------------------------------------------------------


def foreign_private_attributes(path: Path) -> list[str]:
    """`obj._name` reads in a file whose `_name` the file does not define itself (as a def, a
    class or an assignment target): another library's private attribute."""
    tree = ast.parse(path.read_text())
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    own |= {
        t.attr
        for n in ast.walk(tree)
        if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        if isinstance(t, ast.Attribute)
    }
    return [
        f"{path.name}:{n.lineno} .{n.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and n.attr.startswith("_")
        and not n.attr.startswith("__")
        and n.attr not in own
    ]


OWN_FILES = ["module.py", "metrics.py", "bench/__init__.py", "bench/cli.py", "bench/common.py"]
OWN_FILES += ["bench/models.py", "bench/pipeline.py", "bench/report.py", "bench/step.py"]


@pytest.mark.parametrize("name", OWN_FILES)
def test_no_private_attributes_of_lightning_torch_or_torchmetrics(name: str) -> None:
    path = Path(petseg.module.__file__).parent / name
    assert foreign_private_attributes(path) == []


# --- metrics over a split -------------------------------------------------------------------


def test_module_accumulates_over_the_split(tmp_path: Path) -> None:
    """Border is absent from batch A but not from the split; val sees A only: no border at all."""
    module = identity_module()
    trainer = make_trainer(tmp_path)
    a, b = batch(TARGET_A, PRED_A), batch(TARGET_B, PRED_B)
    test = trainer.test(module, dataloaders=loader(a, b), verbose=False)[0]
    dataset_miou = (7 / 10 + 12 / 15 + 9 / 11) / 3
    assert test["test/iou_pet"] == pytest.approx(7 / 10, abs=1e-6)
    assert test["test/iou_background"] == pytest.approx(12 / 15, abs=1e-6)
    assert test["test/iou_border"] == pytest.approx(9 / 11, abs=1e-6)
    assert test["test/miou"] == pytest.approx(dataset_miou, abs=1e-6)
    assert test["test/pixel_acc"] == pytest.approx(28 / 32, abs=1e-6)
    assert test["test/mdice"] == pytest.approx((14 / 17 + 24 / 27 + 18 / 20) / 3, abs=1e-6)

    # The mean of per-batch mIoUs (A has no border, so its mIoU averages two classes) differs.
    miou_a, miou_b = (3 / 5 + 11 / 13) / 2, (4 / 5 + 1 / 2 + 9 / 11) / 3
    assert abs((miou_a + miou_b) / 2 - dataset_miou) > 0.01
    assert abs((11 / 13 + 1 / 2) / 2 - test["test/iou_background"]) > 0.1

    val = trainer.validate(module, dataloaders=loader(a), verbose=False)[0]
    assert math.isnan(val["val/iou_border"]) and math.isnan(val["val/dice_border"])
    assert val["val/miou"] == pytest.approx((3 / 5 + 11 / 13) / 2, abs=1e-6)
    assert "val/article_iou" not in val  # the clean protocol is the default

    # Metrics are reset between runs: a second test gives the same, not a running total.
    again = trainer.test(module, dataloaders=loader(a, b), verbose=False)[0]
    assert again["test/miou"] == pytest.approx(dataset_miou, abs=1e-6)


def test_article_iou_is_micro_jaccard_without_background_targets(tmp_path: Path) -> None:
    """Pixels whose target is background are dropped; the rest give, summed over pet and border,
    TP / (TP + FP + FN). A and B hold 19 such pixels: 16 right, one pet and one border predicted
    background (FN only), one border predicted pet (FP for pet, FN for border)."""
    module = identity_module(article=True)
    a, b = batch(TARGET_A, PRED_A), batch(TARGET_B, PRED_B)
    test = make_trainer(tmp_path).test(module, dataloaders=loader(a, b), verbose=False)[0]
    tp, fp, fn = 3 + 4 + 9, 1, 1 + 2
    assert test["test/article_iou"] == pytest.approx(tp / (tp + fp + fn), abs=1e-6)  # 16 / 20
    # Same from the full confusion matrix, with row and column of background left out.
    cm = torch.tensor(CM_A) + torch.tensor(CM_B)
    cm[BG] = 0
    kept = [PET, BORDER]
    manual = (
        cm.diagonal()[kept].sum() / (cm.sum(0)[kept] + cm.sum(1)[kept] - cm.diagonal()[kept]).sum()
    )
    assert test["test/article_iou"] == pytest.approx(float(manual), abs=1e-6)


def test_article_iou_skips_ignored_pixels(tmp_path: Path) -> None:
    module = identity_module(article=True)
    a = batch(TARGET_B, PRED_B)
    a["mask"][0, 0, :] = -100  # the module's ignore_index: a row of border, one predicted bg
    test = make_trainer(tmp_path).test(module, dataloaders=loader(a), verbose=False)[0]
    # Left: 4 pet right, 6 of 7 border right, 1 border -> pet (FP + FN): 10 / (10 + 1 + 1).
    assert test["test/article_iou"] == pytest.approx(10 / 12, abs=1e-6)


def test_soft_iou_is_the_mean_over_images_not_over_batches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 3, 8, 8) * 3
    mask = torch.randint(0, 3, (3, 8, 8))
    mask[2] = BG  # one easy-to-tell image, so the per-batch means differ
    logits[2, BG] += 6
    batches = [{"image": logits[:2], "mask": mask[:2]}, {"image": logits[2:], "mask": mask[2:]}]
    test = make_trainer(tmp_path).test(identity_module(), loader(*batches), verbose=False)[0]

    per_image = [
        soft_iou(logits[i : i + 1], mask[i : i + 1], smooth=0.001, average="image")
        for i in range(3)
    ]
    expected = float(torch.stack(per_image).mean())
    whole = float(soft_iou(logits, mask, smooth=0.001, average="image"))
    assert expected == pytest.approx(whole, abs=1e-6)  # "image" already means over images
    assert test["test/soft_iou"] == pytest.approx(expected, abs=1e-6)
    batch_means = [
        float(soft_iou(b["image"], b["mask"], smooth=0.001, average="image")) for b in batches
    ]
    assert abs(sum(batch_means) / 2 - expected) > 0.01


# --- the confusion matrix, written ------------------------------------------------------------


def test_confusion_png_and_csv_are_written(tmp_path: Path) -> None:
    module = identity_module()
    trainer = make_trainer(tmp_path)
    a, b = batch(TARGET_A, PRED_A), batch(TARGET_B, PRED_B)
    trainer.validate(module, dataloaders=loader(a), verbose=False)
    trainer.test(module, dataloaders=loader(a, b), verbose=False)

    folder = tmp_path / "confusion"
    assert sorted(p.name for p in folder.iterdir()) == [
        "test_epoch000.csv",
        "test_epoch000.png",
        "val_epoch000.csv",
        "val_epoch000.png",
    ]
    with open(folder / "test_epoch000.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["target", "pred_pet", "pred_background", "pred_border", "total"]
    cm = (torch.tensor(CM_A) + torch.tensor(CM_B)).tolist()
    assert rows[1:] == [[n, *map(str, r), str(sum(r))] for n, r in zip(NAMES, cm, strict=True)]
    with Image.open(folder / "val_epoch000.png") as img:
        assert img.format == "PNG" and img.width > 200 and img.height > 100


def test_confusion_with_a_disabled_wandb_logger(tmp_path: Path, monkeypatch) -> None:
    """W&B gets the table and image when it is a logger; a disabled run must not break that."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    loggers = [CSVLogger(tmp_path, name="csv"), WandbLogger(save_dir=tmp_path, offline=True)]
    try:
        out = make_trainer(tmp_path, logger=loggers).validate(
            identity_module(), dataloaders=loader(batch(TARGET_B, PRED_B)), verbose=False
        )[0]
    finally:
        import wandb

        wandb.finish()
    assert out["val/iou_border"] == pytest.approx(9 / 11, abs=1e-6)
    assert (tmp_path / "confusion" / "val_epoch000.png").is_file()


# --- the best val/miou of a fit -------------------------------------------------------------


# val/miou per epoch: up, down, no score at all (NaN), down.
SCHEDULE = [0.2, 0.5, float("nan"), 0.3]


def fit_scripted(root: Path, epochs: int, monkeypatch, ckpt_path: Path | None = None) -> list[dict]:
    """Fit with val/miou forced to SCHEDULE[epoch]; the CSV rows that hold val/miou."""
    torch.manual_seed(0)
    items = [{"image": torch.rand(3, 8, 8), "mask": torch.randint(0, 3, (8, 8))} for _ in range(4)]
    loader = DataLoader(items, batch_size=2)
    logger = CSVLogger(root, name="csv", version=0)
    trainer = quiet_trainer(root, max_epochs=epochs, logger=logger, num_sanity_val_steps=1)
    real = petseg.module.scores_from_confmat

    def scripted(cm, names):  # the sanity check sees SCHEDULE[0] too: it must not count
        return {**real(cm, names), "miou": torch.tensor(SCHEDULE[trainer.current_epoch])}

    monkeypatch.setattr(petseg.module, "scores_from_confmat", scripted)
    module = conv_module()
    trainer.fit(module, loader, loader, ckpt_path=ckpt_path)
    trainer.save_checkpoint(root / "last.ckpt")
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("val/miou")]


def best_columns(rows: list[dict]) -> list[tuple]:
    """(epoch, val/miou, val/miou_best, val/miou_best_epoch) per row; NaN as None."""

    def value(text: str) -> float | None:
        return None if math.isnan(float(text)) else round(float(text), 6)

    keys = ("val/miou", "val/miou_best", "val/miou_best_epoch")
    return [(int(r["epoch"]), *(value(r[k]) for k in keys)) for r in rows]


def test_best_val_miou_is_logged_every_epoch_and_survives_a_resume(
    tmp_path: Path, monkeypatch
) -> None:
    rows = fit_scripted(tmp_path / "first", 2, monkeypatch)
    assert best_columns(rows) == [(0, 0.2, 0.2, 0), (1, 0.5, 0.5, 1)]

    loaded = SegModule.load_from_checkpoint(tmp_path / "first" / "last.ckpt")
    assert loaded.best_val_miou == pytest.approx(0.5) and loaded.best_val_epoch == 1

    # Resumed: epoch 2 (NaN) and 3 (0.3) are below epoch 1's 0.5, kept in the checkpoint.
    rows = fit_scripted(
        tmp_path / "resumed", 4, monkeypatch, ckpt_path=tmp_path / "first" / "last.ckpt"
    )
    assert best_columns(rows) == [(2, None, 0.5, 1), (3, 0.3, 0.5, 1)]


def test_a_lone_validate_logs_no_best(tmp_path: Path) -> None:
    items = [{"image": torch.rand(3, 8, 8), "mask": torch.randint(0, 3, (8, 8))} for _ in range(2)]
    out = quiet_trainer(tmp_path).validate(conv_module(), DataLoader(items, batch_size=2))[0]
    assert "val/miou" in out and "val/miou_best" not in out  # not a fit: no history to be best in


# --- the train loss and its NaN check -------------------------------------------------------


def train_batches(n: int, nan_at: int | None = None) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    batches = [
        {"image": torch.randn(1, 3, 4, 4), "mask": torch.randint(0, 3, (1, 4, 4))} for _ in range(n)
    ]
    if nan_at is not None:
        batches[nan_at]["image"][0, 0, 0, 0] = float("nan")
    return batches


def test_train_loss_per_logging_step_and_its_epoch_mean_by_image(tmp_path: Path) -> None:
    """train/loss goes to the logger on Lightning's logging steps; train/loss_epoch is the mean
    over images, so a batch of 3 weighs three times a batch of 1."""
    torch.manual_seed(0)
    batches = [
        {"image": torch.randn(b, 3, 4, 4), "mask": torch.randint(0, 3, (b, 4, 4))}
        for b in (1, 3, 1, 3, 1, 3, 1)
    ]
    module = SegModule(net=CONV, loss=CE, optimizer={**SGD, "lr": 0.0}, class_names=NAMES)
    with torch.no_grad():
        losses = [float(module.criterion(module(b["image"]), b["mask"])) for b in batches]
    csv_logger = CSVLogger(tmp_path, name="csv", version="")
    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=3, logger=csv_logger)
    trainer.fit(module, train_dataloaders=loader(*batches))

    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [2, 5]
    sizes = [len(b["image"]) for b in batches]
    by_image = sum(n * loss for n, loss in zip(sizes, losses, strict=True)) / sum(sizes)
    (epoch,) = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert epoch == pytest.approx(by_image, rel=1e-5)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(losses[-1], rel=1e-5)


def stopped_at(root: Path, nan_at: int, accelerator: str) -> int:
    """The batch index a fit of 7 batches (logging every 3rd step) stops at, naming `nan_at`."""
    from petseg.errors import NonFiniteLossError

    seen: list[int] = []

    class Steps(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(batch_idx)

    trainer = quiet_trainer(
        root, accelerator=accelerator, max_epochs=1, log_every_n_steps=3, callbacks=[Steps()]
    )
    with pytest.raises(NonFiniteLossError, match=rf"at global step {nan_at} \(epoch 0\)"):
        trainer.fit(conv_module(), train_dataloaders=loader(*train_batches(7, nan_at)))
    return seen[-1]


def test_non_finite_loss_stops_the_step_itself_on_cpu(tmp_path: Path) -> None:
    assert stopped_at(tmp_path, 1, "cpu") == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("nan_at", "stop"),
    [(1, 2), (6, 6)],  # the next logging step (every 3rd), or the epoch's last batch
)
def test_non_finite_loss_on_gpu_stops_at_a_logging_step(tmp_path: Path, nan_at: int, stop: int):
    assert stopped_at(tmp_path, nan_at, "gpu") == stop


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
    fit_steps(nhwc.train(), steps=1, size=32)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # kept by the optimizer


# --- compile: checkpoints load both ways ---------------------------------------------------------


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def compiled_checkpoints_load_both_ways(tmp_path: Path, backend: str, back: bool = True) -> None:
    compiled = SegModule(net=TWO_CONV, loss=CE, optimizer=ADAM, compile=backend)
    trainer = fit_steps(compiled)
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
    trainer = fit_steps(plain.train())
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    resumed = SegModule.load_from_checkpoint(tmp_path / "plain.ckpt", compile=backend)
    assert_same_state(resumed, plain)
    fit_steps(resumed, steps=1)
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
    trainer = fit_steps(module, steps=1)
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


# --- the confusion matrix leaves the ignored pixels out -------------------------------------------


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
    ours = module.confmats["val_cm"].compute()
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
    assert torch.equal(module.confmats["train_cm"].compute(), reference.compute())
    assert module.confmats["val_cm"].compute().sum() == 5 * 2 * 4 * 4  # val: every batch


# --- precision ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "runs_as", "dtype"),
    [
        ([], "32-true", torch.float32),  # cfg_factory's fp32 (precision=auto: test_precision)
        (["trainer=cpu"], "32-true", torch.float32),  # trainer=cpu no longer forces bf16
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
        trainer = fit_steps(module, steps=3, size=32, precision=cfg.trainer.precision)
    assert trainer.precision == runs_as
    assert dtypes and set(dtypes) == {dtype}  # the network's logits, under autocast or not
    scores = trainer.callback_metrics
    assert math.isfinite(float(scores["train/loss_epoch"]))
    assert 0.0 <= float(scores["train/miou"]) <= 1.0  # metrics take bf16 logits as they are
