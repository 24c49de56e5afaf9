"""model=smp: presets build and learn, weights load from a file exactly, user mistakes give one
line, normalisation lives in the network, and FreezeEncoder keeps the encoder fixed for N epochs.

Offline throughout: every network here is built with encoder_weights=null or a local file; the
one download is simulated (monkeypatch) and fails.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from huggingface_hub.errors import LocalEntryNotFoundError
from torch.utils.data import DataLoader

import petseg.models.smp as smp_module
from petseg.config import model_stride, validate
from petseg.errors import ConfigError
from petseg.finetune import FreezeEncoder
from petseg.models.smp import IMAGENET_MEAN, IMAGENET_STD, SMPModel, preprocessing, smp_stride
from petseg.module import SegModule

from conftest import CONF_DIR, compose_config, quiet_trainer
from test_models import assert_overfits, disk_batch

PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("smp*.yaml"))
OFFLINE = "model.encoder_weights=null"

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, 1 thread


def small(**options) -> SMPModel:
    """A small random-init smp U-Net (ResNet-18), unless options say otherwise."""
    return SMPModel(**{"encoder_name": "resnet18", "encoder_weights": None, **options})


def test_presets_are_all_there() -> None:
    expected = {"smp_unet_resnet34", "smp_fpn_resnet34", "smp_deeplabv3plus_resnet50"}
    assert expected | {"smp", "smp_segformer_mit_b0"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_and_backpropagates(name: str) -> None:
    """Composes as the CLI does, passes validate() at 64 px, logits (2, 3, 64, 64), finite, and
    a gradient on every parameter."""
    cfg = compose_config([f"model={name}", OFFLINE, "data.image_size=64", "trainer=cpu"])
    validate(cfg)
    assert cfg.model.encoder_weights is None
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model)
    logits = net(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 3, 64, 64) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.randint(0, 3, (2, 64, 64))).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_presets_default_to_imagenet_weights() -> None:
    """A preset is a pretrained network unless the user asks for random init."""
    for name in PRESETS:
        assert compose_config([f"model={name}"]).model.encoder_weights == "imagenet"


@pytest.mark.parametrize(
    ("options", "lr", "max_steps"),
    [
        ({"arch": "unet", "encoder_name": "resnet18"}, 3e-3, 60),
        ({"arch": "fpn", "encoder_name": "resnet18"}, 3e-3, 60),
        ({"arch": "segformer", "encoder_name": "mit_b0"}, 3e-3, 80),
    ],
    ids=["unet_resnet18", "fpn_resnet18", "segformer_mit_b0"],
)
def test_overfits_one_batch(options: dict, lr: float, max_steps: int) -> None:
    """Training loss on one fixed 64 px batch falls below 20% of its start within the budget."""
    torch.manual_seed(0)
    net = SMPModel(encoder_weights=None, **options)
    assert_overfits(net, *disk_batch(64), lr=lr, max_steps=max_steps)


# --- input normalisation ------------------------------------------------------------------------


def test_normalisation_is_in_the_network_and_the_checkpoint() -> None:
    """Random init: ImageNet's mean/std, as buffers in the state dict; forward = smp's network
    on the normalised input."""
    net = small().eval()
    state = net.state_dict()
    assert torch.allclose(state["mean"].flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.allclose(state["std"].flatten(), torch.tensor(IMAGENET_STD))
    x = torch.rand(1, 3, 64, 64)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD)
    with torch.inference_mode():
        assert torch.allclose(net(x), net.net((x - mean) / std.view(1, 3, 1, 1)), atol=1e-6)
    other = small(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    other.load_state_dict(state)  # a checkpoint brings its own normalisation
    assert torch.equal(other.mean, net.mean) and torch.equal(other.std, net.std)


def test_named_weights_use_their_preprocessing(monkeypatch) -> None:
    """The weights' config (smp's get_preprocessing_params) sets mean/std, an input range of
    0..255 folded in, and BGR weights flip the channels."""
    params = {"mean": [100.0, 120.0, 140.0], "std": [50.0, 60.0, 70.0], "input_range": [0, 255]}
    monkeypatch.setattr(smp_module, "get_preprocessing_params", lambda name, pretrained: params)
    mean, std, bgr = preprocessing("resnet34", "imagenet")
    assert mean == pytest.approx([100 / 255, 120 / 255, 140 / 255]) and not bgr
    assert std == pytest.approx([50 / 255, 60 / 255, 70 / 255])
    params["input_space"] = "BGR"
    assert preprocessing("resnet34", "imagenet")[2]
    assert preprocessing("resnet34", None) == (list(IMAGENET_MEAN), list(IMAGENET_STD), False)


# --- weights --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_loads_exactly(suffix: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = small()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.encoder.state_dict().items()}, path)
    else:
        torch.save(source.encoder.state_dict(), path)
    torch.manual_seed(2)
    loaded = small(encoder_weights=str(path))
    expected = source.encoder.state_dict()
    got = loaded.encoder.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    fresh = small()  # a different random init: the file, not the seed, made them equal
    assert not torch.equal(fresh.encoder.conv1.weight, loaded.encoder.conv1.weight)


def test_missing_weights_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "encoder.pth"
    with pytest.raises(ConfigError, match=r"^model\.encoder_weights=.*encoder\.pth: no such file"):
        small(encoder_weights=str(path))
    with pytest.raises(ConfigError) as raised:
        small(encoder_weights=str(path))
    assert "\n" not in str(raised.value) and "encoder_weights=null" in str(raised.value)


def test_mismatched_weights_file_names_what_differs(tmp_path: Path) -> None:
    """ResNet-34 weights into a ResNet-18 (extra blocks) and into another architecture's shapes."""
    deeper = tmp_path / "resnet34.pth"
    torch.save(SMPModel(encoder_name="resnet34", encoder_weights=None).encoder.state_dict(), deeper)
    with pytest.raises(ConfigError) as raised:
        small(encoder_weights=str(deeper))
    message = str(raised.value)
    assert "\n" not in message and str(deeper) in message
    assert "does not match the resnet18 encoder" in message and "unexpected: layer" in message
    state = small().encoder.state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    del state["bn1.bias"]
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(ConfigError, match=r"1 missing: bn1\.bias; 1 shape: conv1\.weight"):
        small(encoder_weights=str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a state dict")
    with pytest.raises(ConfigError, match=r"garbage\.pth: cannot read it as a state dict"):
        small(encoder_weights=str(garbage))


def test_download_failure_is_one_line(monkeypatch) -> None:
    """No network (simulated): the weights' name and the offline alternative, on one line."""

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach huggingface.co\nand nothing in the cache")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    with pytest.raises(ConfigError) as raised:
        small(encoder_weights="imagenet")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("model.encoder_weights=imagenet: could not download the imagenet")
    assert "encoder_weights=/path/to/encoder.pth" in message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"arch": "unetx"}, r"^model\.arch=unetx is not an smp architecture: use one of unet,"),
        ({"encoder_name": "resnet19"}, r"^model\.encoder_name=resnet19 is not an smp encoder"),
        ({"encoder_name": "tu-nonet"}, r"^model\.encoder_name=tu-nonet: timm has no model"),
        ({"encoder_weights": "imagenet21k"}, r"smp has no such weights for resnet18; use one"),
        ({"options": {"decoder_widths": [8]}}, r"^model\.options has decoder_widths, not an"),
        ({"options": {"classes": 2}}, r"^model\.options has classes, not an option of smp's Unet"),
    ],
    ids=["arch", "encoder", "timm_encoder", "weights_name", "option", "owned_option"],
)
def test_bad_names_fail_before_any_download(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        small(**options)
    assert "\n" not in str(raised.value)


# --- stride ---------------------------------------------------------------------------------------


def test_stride_is_checked_with_the_fix() -> None:
    net = small()
    assert net.stride == 32 and SMPModel.stride == 32
    with pytest.raises(ValueError, match=r"input 48x48 is not a multiple of 32 .*data\.image_size"):
        net(torch.zeros(1, 3, 48, 48))
    shallow = small(encoder_depth=4, options={"decoder_channels": [64, 32, 16, 8]})
    assert shallow.stride == 16 and shallow(torch.zeros(1, 3, 48, 48)).shape == (1, 3, 48, 48)


@pytest.mark.parametrize(
    ("arch", "depth", "options"),
    [
        ("unet", 5, {}),
        ("unet", 3, {"decoder_channels": [32, 16, 8]}),
        ("pspnet", None, {}),
        ("deeplabv3plus", 5, {"encoder_output_stride": 8}),
        ("deeplabv3", None, {}),
    ],
)
def test_stride_for_matches_the_built_network(arch: str, depth: int | None, options: dict) -> None:
    """What the config can know without building (stride_for) is the encoder's output stride."""
    net = small(arch=arch, encoder_depth=depth, options=options)
    assert smp_stride(arch, depth, options) == net.stride
    node = {"arch": arch, "encoder_depth": depth, "options": options}
    assert SMPModel.stride_for(node) == net.stride


def test_config_checks_the_image_size() -> None:
    cfg = compose_config(["model=smp_unet_resnet34", OFFLINE, "data.image_size=48"])
    assert model_stride(cfg) == 32
    with pytest.raises(ConfigError, match=r"data\.image_size=48 is not a multiple of 32.*SMPModel"):
        validate(cfg)


# --- fine-tuning ----------------------------------------------------------------------------------


def test_frozen_encoder_gets_no_gradient() -> None:
    net = small(encoder_depth=3, options={"decoder_channels": [32, 16, 8]})
    net.freeze_encoder()
    net.train()  # as Lightning does each epoch: the frozen BatchNorms stay in eval mode
    assert not any(m.training for m in net.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    F.cross_entropy(net(torch.rand(2, 3, 32, 32)), torch.randint(0, 3, (2, 32, 32))).backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is not None for p in net.net.decoder.parameters())


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (BatchNorm statistics too), copied."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """The entries whose value differs (BatchNorm's num_batches_tracked counts too)."""
    return [k for k in before if not torch.equal(before[k], after[k])]


class Snapshots(L.Callback):
    """Encoder and decoder state at the end of each training epoch."""

    def __init__(self) -> None:
        self.epochs: list[tuple[dict, dict]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append((snapshot(pl_module.net.encoder), snapshot(pl_module.net.net.decoder)))


def test_freeze_encoder_callback_trains_it_after_n_epochs(tmp_path: Path) -> None:
    """Epoch 0 frozen: encoder weights and BatchNorm statistics unchanged, the decoder's not;
    epoch 1 on: the encoder trains too."""
    torch.manual_seed(0)
    net = {
        "_target_": "petseg.models.smp.SMPModel",
        "encoder_name": "resnet18",
        "encoder_weights": None,
        "encoder_depth": 3,
        "options": {"decoder_channels": [32, 16, 8]},
    }
    module = SegModule(
        net=net,
        loss={"_target_": "petseg.losses.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3},
    )
    start_encoder, start_decoder = snapshot(module.net.encoder), snapshot(module.net.net.decoder)
    items = [{"image": torch.rand(3, 32, 32), "mask": torch.randint(0, 3, (32, 32))}] * 4
    snapshots = Snapshots()
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, callbacks=[FreezeEncoder(epochs=1), snapshots], limit_val_batches=0
    )
    trainer.fit(module, DataLoader(items, batch_size=2))
    (encoder0, decoder0), (encoder1, _) = snapshots.epochs
    assert not changed(start_encoder, encoder0)
    assert changed(start_decoder, decoder0)
    assert any(k.endswith("weight") for k in changed(encoder0, encoder1))
    assert any(k.endswith("running_mean") for k in changed(encoder0, encoder1))
    assert all(p.requires_grad for p in module.net.encoder.parameters())


def test_freeze_encoder_needs_an_encoder() -> None:
    module = SegModule(
        net={"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 1},
        loss={"_target_": "torch.nn.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
    )
    with pytest.raises(ConfigError, match=r"^callbacks\.freeze_encoder: Conv2d has no encoder"):
        FreezeEncoder(epochs=1).freeze_before_training(module)
    with pytest.raises(ConfigError, match=r"epochs=-1 must be a whole number >= 0"):
        FreezeEncoder(epochs=-1)


def test_finetune_experiment_composes(cfg_factory) -> None:
    """experiment=smp_finetune: pretrained U-Net/ResNet-34, the encoder frozen for 2 epochs."""
    cfg = cfg_factory("experiment=smp_finetune", OFFLINE)
    validate(cfg)
    assert cfg.model.arch == "unet" and cfg.model.encoder_name == "resnet34"
    assert compose_config(["experiment=smp_finetune"]).model.encoder_weights == "imagenet"
    callback = hydra.utils.instantiate(cfg.callbacks.freeze_encoder)
    assert isinstance(callback, FreezeEncoder) and callback.epochs == 2
    assert cfg.callbacks.model_checkpoint  # the default callbacks are still there
    assert compose_config(["model=smp"]).callbacks.get("freeze_encoder") is None  # off by default


def test_validate_reads_a_shallow_encoders_stride() -> None:
    """encoder_depth=4 downsamples by 16: 48 px fits, which the class-wide 32 would refuse."""
    from petseg.config import model_stride

    cfg = compose_config(
        ["model=smp", "model.encoder_weights=null", "model.encoder_depth=4", "data.image_size=48"]
    )
    assert model_stride(cfg) == 16
