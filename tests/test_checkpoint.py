"""petseg.checkpoint: a checkpoint loads by itself, offline too."""

from __future__ import annotations

from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

from petseg.checkpoint import load_module
from petseg.module import SegModule

SMALL_SMP = {
    "_target_": "petseg.models.smp.SMPModel",
    "in_channels": 3,
    "num_classes": 3,
    "arch": "unet",
    "encoder_name": "resnet18",
    "encoder_weights": None,
}


def test_pretrained_smp_checkpoint_loads_offline(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    module = SegModule(
        SMALL_SMP,
        {"_target_": "torch.nn.CrossEntropyLoss"},
        {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
    )
    with torch.no_grad():
        module.net.mean.fill_(0.25)  # as named weights' own preprocessing would set it
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": {**module.hparams, "net": {**SMALL_SMP, "encoder_weights": "imagenet"}},
        "pytorch-lightning_version": "2.6.0",
    }
    path = tmp_path / "pretrained.ckpt"
    torch.save(checkpoint, path)

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("no network")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    loaded = load_module(path).eval()  # the weights are in the state dict: nothing to fetch
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), module.eval()(x))
    assert bool((loaded.net.mean == 0.25).all())  # the saved normalisation, not ImageNet's
    with pytest.raises(Exception, match="could not download"):  # what loading did before
        SegModule.load_from_checkpoint(path, map_location="cpu")
