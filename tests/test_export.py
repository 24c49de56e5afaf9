"""petseg.export: a SegNet-DSC checkpoint to ONNX (MaxUnpool2d included) that ONNX Runtime runs
with the logits and labels of eager PyTorch, at any batch size; errors are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from petseg.bench import InMemory
from petseg.errors import ConfigError
from petseg.export import ExportError, ParityError, check_parity, export
from petseg.module import SegModule
from petseg.onnx import ort_logits, ort_session

from conftest import TINY, cli_config, compose_config, quiet_trainer, single_thread

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def onnx_stack() -> None:
    """Skip unless the `export` extra is installed (onnx, onnxscript, onnxruntime)."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built TINY SegModule (segnet_dsc) after 2 steps, saved by trainer.save_checkpoint.

    Trained a little so BatchNorm's running statistics are not the identity.
    """
    with single_thread():
        torch.manual_seed(0)
        cfg = compose_config([*TINY])
        module = SegModule(net=cfg.model, loss=cfg.loss, optimizer=cfg.optimizer)
        batches = [
            {"image": torch.rand(2, 3, 32, 32), "mask": torch.randint(0, 3, (2, 32, 32))}
            for _ in range(2)
        ]
        root = tmp_path_factory.mktemp("fit")
        trainer = quiet_trainer(root, max_steps=2, limit_val_batches=0)
        trainer.fit(module, train_dataloaders=InMemory(batches))
        path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
        trainer.save_checkpoint(path)
        return path


def export_config(tmp_path: Path, *overrides: str):
    return cli_config("export", tmp_path, *overrides)


@pytest.mark.slow
def test_segnet_dsc_exports_and_matches_eager(
    ckpt: Path, tmp_path: Path, onnx_stack, one_thread
) -> None:
    out = tmp_path / "model.onnx"
    cfg = export_config(tmp_path, f"ckpt_path={ckpt}", f"output={out}", "image_size=32", "runs=2")
    result = export(cfg)
    assert out.is_file() and not list(tmp_path.glob("*.data"))  # one self-contained file
    assert result["max_abs_diff"] < 1e-3 and result["argmax_agreement"] >= cfg.min_agreement
    assert result["eager_ms"] > 0 and result["onnxruntime_ms"] > 0
    assert json.loads((tmp_path / "export" / "export.json").read_text())["output"] == str(out)
    check_parity(result, cfg.atol, cfg.min_agreement)  # no ParityError

    # The batch dimension is dynamic: other batch sizes give eager PyTorch's logits.
    net = SegModule.load_from_checkpoint(ckpt, map_location="cpu").net.eval()
    session = ort_session(out, threads=1)
    for batch in (1, 3):
        x = torch.rand(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(ort_logits(session, x), net(x), rtol=1e-3, atol=1e-3)


def test_parity_verdict() -> None:
    good = {"max_abs_diff": 1e-5, "argmax_agreement": 100.0, "output": "m.onnx"}
    check_parity(good, atol=1e-3, min_agreement=99.9)
    with pytest.raises(
        ParityError, match=r"max \|logits diff\| 1\.00e-01 \(allowed 1\.00e-03.*do not"
    ):
        check_parity({**good, "max_abs_diff": 0.1}, atol=1e-3, min_agreement=99.9)
    # Tolerance scales with the logits: 0.01 off on logits of magnitude 20 is fine at 1e-3.
    check_parity({**good, "max_abs_diff": 0.01, "max_abs_logit": 20.0}, 1e-3, 99.9)
    with pytest.raises(ParityError, match=r"allowed 2\.00e-02"):
        check_parity({**good, "max_abs_diff": 0.03, "max_abs_logit": 20.0}, 1e-3, 99.9)
    with pytest.raises(ParityError, match=r"argmax agreement 98\.000%"):
        check_parity({**good, "argmax_agreement": 98.0}, atol=1e-3, min_agreement=99.9)


def test_bad_options_are_config_errors(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="format=tflite: not supported; use one of onnx"):
        export(export_config(tmp_path, f"ckpt_path={ckpt}", "format=tflite"))
    with pytest.raises(ConfigError, match="ckpt_path is not set"):
        export(export_config(tmp_path))
    with pytest.raises(ConfigError, match=r"image_size=30 .* not a multiple of 16"):
        export(export_config(tmp_path, f"ckpt_path={ckpt}", "image_size=30"))


@pytest.mark.slow
def test_cli_prints_parity_and_latency(ckpt: Path, tmp_path: Path, onnx_stack) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cli.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "petseg.export", f"ckpt_path={ckpt}", f"output={out}",
         "image_size=32", "runs=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote {out}" in proc.stdout
    assert "argmax agreement 100.000%" in proc.stdout
    assert "eager PyTorch" in proc.stdout and "ONNX Runtime" in proc.stdout


def test_cli_missing_checkpoint_is_one_error_line(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    missing = tmp_path / "nope.ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "petseg.export", f"ckpt_path={missing}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"ckpt_path={missing}: no such file" in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def smp_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model=smp, U-Net over a randomly initialised ResNet-18, after 1 step at 64 px."""
    with single_thread():
        torch.manual_seed(0)
        cfg = compose_config(
            ["model=smp", "model.encoder_name=resnet18", "model.encoder_weights=null"]
        )
        module = SegModule(net=cfg.model, loss=cfg.loss, optimizer=cfg.optimizer)
        batch = {"image": torch.rand(2, 3, 64, 64), "mask": torch.randint(0, 3, (2, 64, 64))}
        trainer = quiet_trainer(tmp_path_factory.mktemp("fit"), max_steps=1, limit_val_batches=0)
        trainer.fit(module, train_dataloaders=InMemory([batch]))
        path = tmp_path_factory.mktemp("ckpt") / "smp.ckpt"
        trainer.save_checkpoint(path)
        return path


@pytest.mark.slow
def test_smp_unet_exports_and_matches_eager(
    smp_ckpt: Path, tmp_path: Path, onnx_stack, one_thread
) -> None:
    """The encoder's own input normalisation is part of the exported graph: same logits."""
    out = tmp_path / "smp.onnx"
    options = [f"ckpt_path={smp_ckpt}", f"output={out}", "image_size=64", "runs=1"]
    cfg = export_config(tmp_path, *options)
    result = export(cfg)
    assert out.is_file()
    assert result["max_abs_diff"] < 1e-3 and result["argmax_agreement"] >= cfg.min_agreement
    check_parity(result, cfg.atol, cfg.min_agreement)
    with pytest.raises(ConfigError, match=r"image_size=48 .* not a multiple of 32"):
        export(export_config(tmp_path, f"ckpt_path={smp_ckpt}", "image_size=48"))


def test_exporter_failure_is_one_line(ckpt: Path, tmp_path: Path, monkeypatch, onnx_stack) -> None:
    def refuse(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::frobnicate\nmany more lines")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    cfg = export_config(tmp_path, f"ckpt_path={ckpt}", "image_size=32")
    with pytest.raises(ExportError) as info:
        export(cfg)
    message = str(info.value)
    assert message.startswith("torch.onnx.export (dynamo) cannot export SegNet of ckpt_path=")
    assert "(RuntimeError: Unsupported operator aten::frobnicate)" in message
    assert "\n" not in message
