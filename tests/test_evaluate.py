"""petseg.evaluate: at the training resolution a trained checkpoint re-tested gives the run's own
test metrics; at the original resolution (the default) scores use the untouched full-size trimaps;
errors are one line."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict
from PIL import Image

from petseg.errors import ConfigError
from petseg.evaluate import evaluate
from petseg.run_status import read_status
from petseg.train import train
from petseg.wandb_run import training_run

from conftest import cli_config, compose_config, single_thread
from stub_nets import stub_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DATA = [
    "data=synthetic",
    "data.synthetic.num_trainval=8",
    "data.synthetic.num_test=4",
    "data.synthetic.size=48",
    "data.image_size=32",
    "data.batch_size=3",  # 4 test images: the last batch is smaller
    "data.num_workers=0",
    "data.pin_memory=false",
]


def evaluate_config(tmp_path: Path, *overrides: str):
    # fp32 as the tests train (precision=auto may pick bf16 on a CPU that has it).
    cpu = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true"]
    return cli_config("evaluate", tmp_path, *cpu, *overrides)


def test_evaluate_reproduces_the_runs_test_metrics(cfg_factory, tmp_path: Path, one_thread) -> None:
    cfg = cfg_factory(*DATA, "model=segnet_dsc", "trainer.max_epochs=1")
    trained = train(cfg)
    run = Path(cfg.paths.output_dir)
    best = next((run / "checkpoints").glob("epoch*.ckpt"))
    test_keys = sorted(k for k in trained if k.startswith("test/"))
    assert {"test/miou", "test/soft_iou", "test/iou_border", "test/loss"} <= set(test_keys)
    with open(run / "csv" / "metrics.csv", newline="") as f:
        logged = next(r for r in csv.DictReader(f) if r["test/miou"])

    out = tmp_path / "report" / "eval.json"
    ecfg = evaluate_config(
        tmp_path, *DATA, f"ckpt_path={best}", f"output={out}", "resolution=train"
    )
    metrics = evaluate(ecfg)
    assert sorted(metrics) == test_keys
    for key in test_keys:
        assert metrics[key] == pytest.approx(trained[key], abs=1e-6, nan_ok=True), key
        assert metrics[key] == pytest.approx(float(logged[key]), abs=1e-6, nan_ok=True), key

    for path in (tmp_path / "evaluate" / "metrics.json", out):
        saved = json.loads(path.read_text())
        assert saved.pop("protocol").startswith("resolution=train: at data.image_size")
        assert sorted(saved) == test_keys
        assert all(
            (saved[k] is None and math.isnan(metrics[k])) or saved[k] == pytest.approx(metrics[k])
            for k in test_keys
        )
    assert (tmp_path / "evaluate" / "confusion" / "test_epoch000.csv").is_file()

    # The article's protocol on the same checkpoint adds article_iou (on augmented images).
    article_options = ["metrics.article_protocol=true", "resolution=train"]
    article = evaluate(evaluate_config(tmp_path, *DATA, f"ckpt_path={best}", *article_options))
    assert 0.0 <= article["test/article_iou"] <= 1.0


def test_missing_checkpoint_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^ckpt_path=.*nope\.ckpt: no such file"):
        evaluate(evaluate_config(tmp_path, *DATA, f"ckpt_path={tmp_path}/nope.ckpt"))
    with pytest.raises(ConfigError, match=r"^ckpt_path is not set"):
        evaluate(evaluate_config(tmp_path, *DATA))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"^ckpt_path=.*bad\.ckpt: cannot load it"):
        evaluate(evaluate_config(tmp_path, *DATA, f"ckpt_path={bad}"))


def test_cli_missing_checkpoint_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "petseg.evaluate", f"ckpt_path={tmp_path}/nope.ckpt"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ckpt_path=" in errors[0] and "nope.ckpt" in errors[0]
    assert "Traceback" not in proc.stderr


# Two test photos of different sizes, bright on the left, and trimaps whose pet ends a little
# before the bright part does: (name, width, height, bright columns, pet columns).
PHOTOS = [("wide", 12, 6, 6, 5), ("wider", 24, 6, 12, 10)]


@pytest.fixture
def two_photos(tmp_path: Path) -> Path:
    """data.root of an official layout holding PHOTOS as its test split (and one other image
    as trainval: a name in both lists stops setup)."""
    base = tmp_path / "pets" / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations" / "trimaps").mkdir(parents=True)
    for name, width, height, bright, pet in [*PHOTOS, ("spare", 8, 8, 4, 4)]:
        image = np.zeros((height, width, 3), np.uint8)
        image[:, :bright] = 255
        Image.fromarray(image).save(base / "images" / f"{name}.jpg", quality=95)
        trimap = np.full((height, width), 2, np.uint8)  # 2: background
        trimap[:, :pet] = 1  # 1: pet
        Image.fromarray(trimap).save(base / "annotations" / "trimaps" / f"{name}.png")
    names = "".join(f"{name} 1 1 1\n" for name, *_ in PHOTOS)
    (base / "annotations" / "test.txt").write_text(names)
    (base / "annotations" / "trainval.txt").write_text("spare 1 1 1\n")  # not a test name
    return tmp_path / "pets"


def stub_evaluate(tmp_path: Path, root: Path, *overrides: str) -> dict[str, float]:
    """evaluate() of the BrightIsPet stub (pet where bright) on `root` at 8 px, batch 2."""
    data = [
        f"data.root={root}", "data.download=false", "data.image_size=8", "data.batch_size=2",
        "data.num_workers=0", "data.pin_memory=false", "data.cache=false",
    ]  # fmt: skip
    ckpt = stub_checkpoint(tmp_path / "stub.ckpt")
    return evaluate(evaluate_config(tmp_path, *data, f"ckpt_path={ckpt}", *overrides))


def confusion_counts(path: Path) -> list[list[int]]:
    with open(path, newline="") as f:
        return [[int(v) for v in row[1:-1]] for row in list(csv.reader(f))[1:]]


def test_original_resolution_scores_untouched_full_size_trimaps(
    tmp_path: Path, two_photos: Path, one_thread, capsys
) -> None:
    """Hand-computed. At 8 px the stub's logits are +4 on columns 0-3 and -4 on 4-7 for both
    photos, and nearest-shrunk trimaps (cv2: source column floor(j * W / 8)) are pet on 0-3 too:
    resolution=train scores a perfect 1. Resized bilinearly to 12 and 24 columns the logits
    change sign between columns 5|6 and 11|12 (the bright edge), but the trimaps' pet ends at 5
    and 10: 1 and 2 columns of 6 rows are background predicted pet. Over 12x6 + 24x6 = 216
    pixels: pet 90 right; background 108 right, 18 predicted pet."""
    original = stub_evaluate(tmp_path, two_photos)  # the default
    assert original["test/pixel_acc"] == pytest.approx(198 / 216)
    assert original["test/iou_pet"] == pytest.approx(90 / 108)  # 5/6
    assert original["test/iou_background"] == pytest.approx(108 / 126)  # 6/7
    assert math.isnan(original["test/iou_border"])  # never a target nor predicted: left out
    assert original["test/miou"] == pytest.approx((5 / 6 + 6 / 7) / 2)
    assert original["test/dice_pet"] == pytest.approx(2 * 90 / (90 + 108))
    assert original["test/mdice"] == pytest.approx((180 / 198 + 216 / 234) / 2)
    assert 0 < original["test/soft_iou"] < 1 and original["test/loss"] > 0
    # The labels are the full-size trimaps as they are: every pixel once, per its raw class.
    confusion = tmp_path / "evaluate" / "confusion"
    counts = confusion_counts(confusion / "test_original.csv")  # rows target, columns pred
    assert counts == [[90, 0, 0], [18, 108, 0], [0, 0, 0]]
    saved = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert saved["protocol"].startswith("resolution=original: each image at its own size")
    assert saved["test/pixel_acc"] == pytest.approx(198 / 216)

    train = stub_evaluate(tmp_path, two_photos, "resolution=train")
    assert train["test/pixel_acc"] == 1.0 and train["test/miou"] == 1.0
    assert confusion_counts(confusion / "test_epoch000.csv") == [[64, 0, 0], [0, 64, 0], [0, 0, 0]]
    assert sorted(original) == sorted(train)  # the same metrics, measured two ways


def test_bad_resolution_and_augmented_tests_with_original_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^resolution=full: use original .* or train"):
        evaluate(evaluate_config(tmp_path, *DATA, "resolution=full"))
    with pytest.raises(ConfigError, match=r"^metrics.article_protocol=true .* resolution=train$"):
        evaluate(evaluate_config(tmp_path, *DATA, "metrics.article_protocol=true"))
    with pytest.raises(ConfigError, match=r"^data.eval_augment=true augments .* resolution=train$"):
        evaluate(evaluate_config(tmp_path, *DATA, "data.eval_augment=true"))


def test_cli_prints_the_protocol(tmp_path: Path, two_photos: Path) -> None:
    ckpt = stub_checkpoint(tmp_path / "stub.ckpt")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    args = [
        f"ckpt_path={ckpt}", f"data.root={two_photos}", "data.download=false",
        "data.image_size=8", "data.num_workers=0", "data.cache=false",
        "trainer.accelerator=cpu", "trainer.devices=1",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "petseg.evaluate", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    protocol = next(i for i, line in enumerate(lines) if line.startswith("protocol: "))
    assert lines[protocol].startswith("protocol: resolution=original: each image at its own size")
    assert f"{198 / 216:.6f}" in next(line for line in lines if line.startswith("test/pixel_acc"))


TRAIN_GROUP = "sweep-a"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real segnet_dsc checkpoint: one epoch (3 steps) on the synthetic DATA at 32 px, logged
    to an offline W&B run in group TRAIN_GROUP (its id and group go to status.json)."""
    with single_thread(), pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        tmp = tmp_path_factory.mktemp("train")
        overrides = [
            f"paths.root_dir={tmp}", "trainer.accelerator=cpu", "trainer.devices=1",
            *DATA, "model=segnet_dsc", "trainer.max_epochs=1", "trainer.precision=32-true",
            "test=false", "logger=wandb", f"logger.wandb.group={TRAIN_GROUP}",
        ]  # fmt: skip
        cfg = compose_config(overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp / "run")
        train(cfg)
        return tmp / "run" / "checkpoints" / "last.ckpt"


def test_tta_changes_a_real_checkpoints_scores(trained: Path, tmp_path: Path, one_thread) -> None:
    """hflip and multi-scale TTA score a trained network's averaged softmax: other scores, at
    both resolutions, under the same metric names; the protocol line says which TTA ran."""
    for resolution in ("train", "original"):
        options = [*DATA, f"ckpt_path={trained}", f"resolution={resolution}"]
        plain = evaluate(evaluate_config(tmp_path / resolution, *options))
        for tta in (["tta=hflip"], ["tta.hflip=true", "tta.scales=[0.75,1,1.25]"]):
            scored = evaluate(evaluate_config(tmp_path / resolution, *options, *tta))
            assert sorted(scored) == sorted(plain)
            assert scored["test/loss"] != pytest.approx(plain["test/loss"], rel=1e-4), tta
            assert scored["test/soft_iou"] != pytest.approx(plain["test/soft_iou"], rel=1e-4)
            assert all(0 <= scored[k] <= 1 for k in ("test/pixel_acc", "test/soft_iou"))
            saved = json.loads((tmp_path / resolution / "evaluate" / "metrics.json").read_text())
            passes = 2 if len(tta) == 1 else 6
            assert f"; tta: softmax averaged over {passes} passes" in saved["protocol"]
            assert saved["protocol"].startswith(f"resolution={resolution}:")


def test_hflip_tta_of_a_mirror_equivariant_network_changes_nothing(
    tmp_path: Path, two_photos: Path, one_thread
) -> None:
    """BrightIsPet is per pixel, so it commutes with a flip: hflip TTA gives the same
    (hand-computed) full-size scores as no TTA."""
    plain = stub_evaluate(tmp_path, two_photos)
    counts = confusion_counts(tmp_path / "evaluate" / "confusion" / "test_original.csv")
    flipped = stub_evaluate(tmp_path, two_photos, "tta=hflip")
    assert flipped["test/pixel_acc"] == pytest.approx(198 / 216)
    for key, value in plain.items():
        assert flipped[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    confusion = tmp_path / "evaluate" / "confusion" / "test_original.csv"
    assert confusion_counts(confusion) == counts == [[90, 0, 0], [18, 108, 0], [0, 0, 0]]


def test_bad_tta_is_one_line_before_the_checkpoint_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^tta\.scales=\[0\] must be a non-empty list") as info:
        evaluate(evaluate_config(tmp_path, *DATA, "tta.scales=[0]"))  # no ckpt_path either
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^tta\.size: unknown key"):
        evaluate(evaluate_config(tmp_path, *DATA, "+tta.size=2"))


@pytest.fixture
def wandb_spy(monkeypatch) -> dict[str, list]:
    """wandb.init and wandb.finish, recorded: `runs` (each run's job_type, group, tags and config
    as it finished, and the exit code) and `logged` (every dict a run logged)."""
    import wandb

    spy: dict[str, list] = {"inits": [], "logged": [], "runs": []}
    real_init, real_finish = wandb.init, wandb.finish

    def init(*args, **kwargs):
        run = real_init(*args, **kwargs)
        real_log = run.log
        run.log = lambda data, *a, **k: (spy["logged"].append(data), real_log(data, *a, **k))[1]
        spy["inits"].append(kwargs)
        return run

    def finish(*args, **kwargs):
        run = wandb.run
        seen = (run.job_type, run.group, set(run.tags), dict(run.config), kwargs.get("exit_code"))
        spy["runs"].append(seen)
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "finish", finish)
    return spy


@pytest.mark.parametrize("resolution", ["original", "train"])
def test_wandb_run_of_its_own_linked_to_the_training_run(
    trained: Path, tmp_path: Path, resolution: str, wandb_spy, monkeypatch, one_thread
) -> None:
    """logger=wandb: an offline run, job_type evaluate, in the training run's group, whose config
    holds the training run's W&B id; it gets the scores, the confusion matrix (the one saved to
    the run folder) and the test images with their masks, and is finished."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    status = read_status(trained.parent.parent)
    assert status["wandb_id"] and status["wandb_group"] == TRAIN_GROUP
    options = [f"ckpt_path={trained}", f"resolution={resolution}", "logger=wandb"]
    metrics = evaluate(evaluate_config(tmp_path, *DATA, *options))

    assert wandb.run is None and len(wandb_spy["runs"]) == 1
    job_type, group, tags, config, exit_code = wandb_spy["runs"][0]
    assert (job_type, group, exit_code) == ("evaluate", TRAIN_GROUP, 0)
    assert {"evaluate", f"resolution:{resolution}"} <= tags
    assert config["train_run_id"] == status["wandb_id"]
    assert config["train_run_dir"] == str(trained.parent.parent.resolve())
    assert config["protocol"].startswith(f"resolution={resolution}:")
    assert list((tmp_path / "evaluate" / "wandb").glob("offline-run-*"))

    logged = {k: v for data in wandb_spy["logged"] for k, v in data.items()}
    assert logged["test/miou"] == pytest.approx(metrics["test/miou"])
    table = logged["test/confusion_table"]
    assert isinstance(table, wandb.Table) and isinstance(logged["test/confusion"], wandb.Image)
    name = "test_original" if resolution == "original" else "test_epoch000"
    counts = confusion_counts(tmp_path / "evaluate" / "confusion" / f"{name}.csv")
    assert [row[1:-1] for row in table.data] == counts and sum(map(sum, counts)) > 0
    overlays = logged["test/predictions"]
    assert len(overlays) == 4 and all(isinstance(image, wandb.Image) for image in overlays)


def test_no_wandb_without_logger_or_when_disabled(
    tmp_path: Path, two_photos: Path, wandb_spy, monkeypatch, one_thread
) -> None:
    """Without logger=, no W&B run (WANDB_MODE=offline or not); WANDB_MODE=disabled wins over
    logger=wandb. The scores are the same either way."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    plain = stub_evaluate(tmp_path, two_photos)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    disabled = stub_evaluate(tmp_path, two_photos, "logger=wandb")
    assert wandb_spy["inits"] == [] and not (tmp_path / "evaluate" / "wandb").exists()
    assert disabled["test/pixel_acc"] == plain["test/pixel_acc"] == pytest.approx(198 / 216)


def test_training_run_is_the_folder_above_checkpoints(tmp_path: Path) -> None:
    """A checkpoint in <run>/checkpoints/ links to <run>/status.json; one kept anywhere else
    links to nothing (the folder above it is no run of its)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"wandb_id": "abc", "wandb_group": None}))
    assert training_run(run / "checkpoints" / "last.ckpt") == (run, read_status(run))
    assert read_status(run)["wandb_id"] == "abc"
    assert training_run(run / "last.ckpt") == (None, {})
