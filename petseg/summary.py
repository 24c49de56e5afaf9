"""Size and speed of every `conf/model/*.yaml`, and the conv vs depthwise-separable conv table.

    python -m petseg.summary [--runs 5] [--threads 1] [overrides, e.g. data.image_size=256]
    python -m petseg.summary model=smp_unet_resnet34,unet [overrides]  # those models only
    python -m petseg.summary conv_vs_dsc

Both print Markdown tables; pretrained encoders are never fetched: weights change no figure here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import hydra
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torchinfo import summary

from petseg.config import CONF_DIR, model_names
from petseg.flops import mult_adds
from petseg.markdown import Row, format_table
from petseg.models.blocks import ConvBNReLU, DepthwiseSeparableConv

# conv_vs_dsc: each step halves the side and doubles the channels, from 128 px (3 -> 64 first).
CONV_STEPS = ((3, 64, 128), (64, 128, 64), (128, 256, 32), (256, 512, 16), (512, 1024, 8))

NOTES = """\
- parameters: torchinfo `total_params` (ViT's count grows with image_size: its position embeddings).
- mult-adds: torch's FlopCounterMode / 2 over convs, matmuls and attention (not torchinfo's, which
  counts a Linear once per image instead of once per token).
- latency: batch 1, eval + inference_mode, median of --runs after one warm-up run.
- activations saved for backward: measured, bytes autograd keeps in one training-mode forward of
  batch 1 (parameters excluded). torchinfo fwd/bwd size: its estimate, 2x the outputs of leaf
  layers that have parameters."""


def saved_activation_bytes(net: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one training forward: the real activation memory.

    Parameters are left out; tensors sharing storage (views, in-place ops) are counted once.
    """
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x)
    return sum(storages.values())


def latency_ms(net: nn.Module, x: torch.Tensor, runs: int) -> float:
    """Median forward time (eval, inference mode) after one warm-up run."""
    net.eval()
    times = []
    with torch.inference_mode():
        for _ in range(runs + 1):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:])


def model_row(name: str, net: nn.Module, size: int, runs: int) -> Row:
    """One table row: size, cost and speed of `net` on a (1, 3, size, size) input."""
    x = torch.randn(1, 3, size, size)
    stats = summary(net.eval(), input_size=tuple(x.shape), verbose=0, device="cpu")
    return {
        "model": name,
        "parameters": stats.total_params,
        "mult-adds (G)": mult_adds(net, x) / 1e9,
        f"CPU latency (ms, {torch.get_num_threads()} thr)": latency_ms(net, x, runs),
        "activations saved for backward (MB)": saved_activation_bytes(net, x) / 1e6,
        "torchinfo fwd/bwd size (MB)": stats.total_output_bytes / 1e6,
    }


def split_models(args: list[str]) -> tuple[list[str], list[str]]:
    """The models of a `model=a,b` argument (every model when there is none), and the rest."""
    chosen = [a.split("=", 1)[1] for a in args if a.startswith("model=")]
    overrides = [a for a in args if not a.startswith("model=")]
    names = [n.strip() for c in chosen for n in c.split(",") if n.strip()]
    return names or model_names(), overrides


def model_rows(names: list[str], overrides: list[str], runs: int) -> list[Row]:
    """A row per model, each composed as `python -m petseg.train model=<name> <overrides>`,
    with `model.encoder_weights=null` where the node has that key and overrides do not set it."""
    rows = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name in names:
            cfg = compose(config_name="config", overrides=[f"model={name}", *overrides])
            if cfg.model.get("encoder_weights") is not None and not any(
                o.startswith("model.encoder_weights=") for o in overrides
            ):
                cfg.model.encoder_weights = None  # no download: the size does not depend on it
            torch.manual_seed(0)
            net = hydra.utils.instantiate(cfg.model)
            rows.append(model_row(name, net, cfg.data.image_size, runs))
    return rows


def conv_vs_dsc_rows() -> list[Row]:
    """Parameters and mult-adds per layer: regular 3x3 conv vs the DSC of `blocks.py` (no BN)."""
    rows = []
    for c_in, c_out, side in CONV_STEPS:
        dsc = DepthwiseSeparableConv(c_in, c_out)
        layers = {
            "conv": ConvBNReLU(c_in, c_out).conv,
            "dsc": nn.Sequential(dsc.conv_dw, dsc.conv_pw),
        }
        stats = {
            k: summary(m, input_size=(1, c_in, side, side), verbose=0, device="cpu")
            for k, m in layers.items()
        }
        rows.append(
            {
                "layer": f"{c_in}->{c_out} @ {side}px",
                "conv params": stats["conv"].total_params,
                "DSC params": stats["dsc"].total_params,
                "conv mult-adds (M)": stats["conv"].total_mult_adds / 1e6,
                "DSC mult-adds (M)": stats["dsc"].total_mult_adds / 1e6,
                "DSC / conv": stats["dsc"].total_params / stats["conv"].total_params,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("args", nargs="*", help="`conv_vs_dsc`, or Hydra overrides")
    parser.add_argument("--runs", type=int, default=5, help="timed forwards per model")
    # One thread by default: reproducible figures; a shared or busy CPU wrecks multi-thread ones.
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the timings")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.args[:1] == ["conv_vs_dsc"]:
        print(format_table(conv_vs_dsc_rows()))
        return
    print(f"torch {torch.__version__}; batch 1; latency = median of {args.runs} runs")
    names, overrides = split_models(args.args)
    print(format_table(model_rows(names, overrides, args.runs)))
    print(NOTES)


if __name__ == "__main__":
    main()
