"""data.labels (trimap, binary) and data.border (keep, ignore): classes, labels, loss, metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from petseg.build import build_module
from petseg.data.oxford import IGNORE_INDEX, PetTrimaps, label_table
from petseg.data.transforms import eval_pipeline
from petseg.losses.functional import cross_entropy
from petseg.train import train

from conftest import TINY, compose_config, quiet_trainer

# load_trimap's labels: 0 pet, 1 background, 2 border.
TRIMAP = torch.tensor([[0, 1], [2, 0]])
CHOICES = {  # override -> (class names, labels of TRIMAP)
    "data.labels=trimap": (["pet", "background", "border"], [[0, 1], [2, 0]]),
    "data.labels=binary": (["pet", "background"], [[0, 1], [0, 0]]),
    "data.border=ignore": (["pet", "background"], [[0, 1], [IGNORE_INDEX, 0]]),
    "data.labels=binary data.border=ignore": (["pet", "background"], [[0, 1], [IGNORE_INDEX, 0]]),
}


@pytest.mark.parametrize("choice", CHOICES)
def test_choice_sets_classes_and_model_outputs(choice: str) -> None:
    names, _ = CHOICES[choice]
    cfg = compose_config(choice.split())
    assert list(cfg.class_names) == names
    assert cfg.data.num_classes == len(names) == cfg.model.num_classes
    # evaluate composes the data group alone: the count follows there too.
    assert compose_config(choice.split(), config_name="evaluate").data.num_classes == len(names)


@pytest.mark.parametrize("choice", CHOICES)
def test_label_table_maps_the_trimap(choice: str) -> None:
    _, expected = CHOICES[choice]
    labels = dict(o.split("=") for o in choice.split())
    table = label_table(labels.get("data.labels", "trimap"), labels.get("data.border", "keep"))
    mapped = TRIMAP if table is None else table[TRIMAP]
    assert mapped.tolist() == expected


def test_dataset_applies_the_choice_after_the_transforms(tiny_pets: Path) -> None:
    base = tiny_pets / "oxford-iiit-pet"
    masks = {
        border: PetTrimaps(base, ["synthetic_1"], eval_pipeline(32), 32, border=border)[0]["mask"]
        for border in ("keep", "ignore")
    }
    binary = PetTrimaps(base, ["synthetic_1"], eval_pipeline(32), 32, labels="binary")[0]["mask"]
    keep, ignore = masks["keep"], masks["ignore"]
    assert (keep == 2).any() and ignore.dtype == binary.dtype == torch.long
    assert torch.equal(ignore == IGNORE_INDEX, keep == 2)  # the border, and only it
    assert torch.equal(ignore[keep != 2], keep[keep != 2])
    assert torch.equal(binary, keep.masked_fill(keep == 2, 0))  # the border counts as pet


def test_datamodule_rejects_a_class_count_that_does_not_match() -> None:
    from petseg.data.datamodule import PetDataModule
    from petseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.num_classes=3 but data\.labels=binary"):
        PetDataModule(num_classes=3, labels="binary")
    assert PetDataModule(num_classes=2, border="ignore").class_names == ["pet", "background"]


def test_decoded_cache_is_shared_by_every_choice(cfg_factory) -> None:
    from petseg.build import build

    folders = []
    for choice in ("data.labels=trimap", "data.labels=binary", "data.border=ignore"):
        cfg = cfg_factory(*TINY, "data.cache=true", choice)
        dm = build(cfg.data)
        dm.prepare_data()
        dm.setup("fit")
        folders.append(sorted(p.name for p in (dm.base() / ".petseg-cache").iterdir()))
        batch = next(iter(dm.train_dataloader()))
        values = set(batch["mask"].unique().tolist())
        assert values <= {0, 1, 2, IGNORE_INDEX} and max(values) < cfg.data.num_classes
    assert folders[0] == folders[1] == folders[2]  # one decoded cache, labels mapped after it


class FixedLogits(torch.nn.Module):
    """A network that answers every batch with the same logits (B, C, H, W)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1) + self.weight


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        # The border pixel (bottom left) predicted background: ignored, every other pixel right.
        (
            "data.border=ignore",
            {"pixel_acc": 1.0, "iou_pet": 1.0, "iou_background": 1.0, "miou": 1.0},
        ),
        # Counted as pet instead: 3 of 4 right; pet tp 2 fn 1 -> 2/3; background tp 1 fp 1 -> 1/2.
        (
            "data.labels=binary",
            {"pixel_acc": 0.75, "iou_pet": 2 / 3, "iou_background": 0.5, "miou": 7 / 12},
        ),
    ],
)
def test_ignored_border_is_left_out_of_loss_and_metrics(
    choice: str, expected: dict[str, float], tmp_path: Path
) -> None:
    cfg = compose_config(choice.split())
    module = build_module(cfg)
    dataset = PetTrimaps(
        tmp_path, [], eval_pipeline(8), labels=cfg.data.labels, border=cfg.data.border
    )
    target = dataset.to_labels(TRIMAP)[None]  # (1, 2, 2), as the loaders give it
    predicted = torch.tensor([[0, 1], [1, 0]])  # pet, background / background, pet
    logits = torch.nn.functional.one_hot(predicted, 2).permute(2, 0, 1)[None].float() * 4
    module.net = FixedLogits(logits)
    batch = {"image": torch.zeros(3, 2, 2), "mask": target[0]}
    scores = quiet_trainer(tmp_path).validate(module, DataLoader([batch]), verbose=False)[0]
    for name, value in expected.items():
        assert scores[f"val/{name}"] == pytest.approx(value), name
    assert "val/iou_border" not in scores
    valid = target != IGNORE_INDEX
    reference = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid])
    assert module.criterion(logits, target) == pytest.approx(float(reference))
    assert cross_entropy(logits, target) == pytest.approx(float(reference))


@pytest.mark.parametrize("choice", ["data.labels=binary", "data.border=ignore"])
def test_choice_trains_end_to_end(choice: str, cfg_factory) -> None:
    cfg = cfg_factory(*TINY, "trainer.max_epochs=1", choice)
    metrics = train(cfg)
    for stage in ("val", "test"):
        assert {f"{stage}/iou_pet", f"{stage}/iou_background"} <= metrics.keys()
        assert f"{stage}/iou_border" not in metrics
    (ckpt,) = (Path(cfg.paths.output_dir) / "checkpoints").glob("last.ckpt")
    hparams = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["net"]["num_classes"] == 2
    assert hparams["class_names"] == ["pet", "background"]
    confusion = sorted((Path(cfg.paths.output_dir) / "confusion").glob("test_*.csv"))
    assert confusion and "border" not in confusion[-1].read_text()
