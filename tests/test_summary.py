"""The summary tool: the conv-vs-DSC ratios of the article, and the model table's counts."""

from __future__ import annotations

import pytest
import torch

from petseg.config import model_names
from petseg.flops import mult_adds
from petseg.markdown import format_table
from petseg.models import ViTSeg
from petseg.summary import conv_vs_dsc_rows, main, model_rows, split_models

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, 1 thread


def test_conv_vs_dsc_matches_formulas_and_article_ratio() -> None:
    """DSC costs 1/9 + 1/C_out of a 3x3 conv: ~11-12% for wide layers, as the article reports."""
    rows = conv_vs_dsc_rows()
    for row in rows:
        c_in, rest = row["layer"].split("->")
        c_in, c_out = int(c_in), int(rest.split()[0])
        assert row["conv params"] == 9 * c_in * c_out
        assert row["DSC params"] == 9 * c_in + c_in * c_out
        # Stride-1 convs: mult-adds are parameters x output pixels, so the ratio is the same.
        mult_add_ratio = row["DSC mult-adds (M)"] / row["conv mult-adds (M)"]
        assert mult_add_ratio == pytest.approx(row["DSC / conv"])
        if c_out >= 128:
            assert 0.10 < row["DSC / conv"] < 0.13


def test_model_rows_count_parameters() -> None:
    """Two small models at 64 px: exact parameter counts and positive costs."""
    rows = model_rows(["segnet_dsc", "vit_small"], ["data.image_size=64"], runs=1)
    vit_small = ViTSeg(image_size=64, embed_dim=192, depth=6, num_heads=3)
    expected = {
        "segnet_dsc": 1_749_671,
        "vit_small": sum(p.numel() for p in vit_small.parameters()),
    }
    assert {row["model"]: row["parameters"] for row in rows} == expected
    for row in rows:
        assert all(v > 0 for v in row.values() if isinstance(v, float))


def test_mult_adds_count_every_token_and_attention() -> None:
    """A ViT's mult-adds: its Linears once per token, plus QK^T and AV per block."""
    d, n, p, depth, classes = 32, 16, 8, 2, 3  # 32 px input, 8 px patches: 16 tokens
    net = ViTSeg(image_size=32, patch_size=p, embed_dim=d, depth=depth, num_heads=2)
    linear = 3 * p * p * d + depth * (3 * d * d + d * d + 8 * d * d) + d * p * p * classes
    attention = depth * 2 * n * n * d
    assert mult_adds(net, torch.randn(1, 3, 32, 32)) == n * linear + attention


def test_format_table_is_markdown() -> None:
    table = format_table(
        [
            {"model": "a", "parameters": 1234567, "ms": 0.5},
            {"model": "b", "parameters": 1, "ms": 12.0},
        ]
    )
    lines = table.splitlines()
    assert lines[0] == "| model | parameters | ms |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| a | 1,234,567 | 0.500 |"
    assert len(lines) == 4


def test_cli_conv_vs_dsc(capsys: pytest.CaptureFixture[str]) -> None:
    main(["conv_vs_dsc"])
    out = capsys.readouterr().out
    assert out.startswith("| layer |")
    assert "512->1024 @ 8px" in out


def test_split_models_takes_the_model_choice_out_of_the_overrides() -> None:
    assert split_models(["model=smp_unet_resnet34,unet", "data.image_size=64"]) == (
        ["smp_unet_resnet34", "unet"],
        ["data.image_size=64"],
    )
    names, overrides = split_models(["data.image_size=64"])
    assert names == model_names() and overrides == ["data.image_size=64"]


def test_cli_smp_model_only_and_offline(capsys: pytest.CaptureFixture[str]) -> None:
    """`model=smp_unet_resnet34` gives that model's row alone (it used to relabel every row with
    it); its encoder_weights (imagenet) is not fetched, with or without the override."""
    for extra in ([], ["model.encoder_weights=null"]):
        main(["model=smp_unet_resnet34", *extra, "data.image_size=64", "--runs", "1"])
        rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
        assert len(rows) == 2, rows  # header and one model
        assert rows[1].startswith("| smp_unet_resnet34 | 24,436,659 |")
