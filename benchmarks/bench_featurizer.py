"""Benchmark: early-stopped feature extraction vs a full forward, and fp32 vs bf16 pre-training steps.

Run (from the repository root, on an otherwise idle machine):

    python benchmarks/bench_featurizer.py --out benchmarks/results/featurizer.json

`--quick` (tiny batches, one repeat, one thread) checks that the script works in about a minute;
`--threads N` sets torch's thread count (default: torch's own, i.e. one per core);
`--mnist-model PATH` benchmarks any diffusers folder instead of the bundled `mnist-ddpm`.

Part 1 times `Featurizer.extract` with `stop_early=True` and `False` at an encoder block, the mid
block and the first decoder block, on the MNIST pixel UNet and on a randomly initialised
Stable-Diffusion-shaped latent UNet (latents only: VAE cost excluded). Part 2 times one DDPM
pre-training step (loss, backward, AdamW) of the mnist-ddpm architecture in fp32 and under bf16
autocast. Each number is the best of a few repeats after a warm-up call: the minimum is the least
disturbed by other work on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import diffusers
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

from diffrep import DiffrepError
from diffrep.core import Backbone, Featurizer, load_backbone, noise_form
from diffrep.pretrain import DDPMLoss, PretrainConfig, build_denoiser, build_scheduler

BLOCKS = ("down_blocks.1", "mid_block", "up_blocks.0")  # encoder, bottleneck, first decoder block
T = 50  # light noise, the useful range for features (DESIGN.md §6)


def best_time(fn, repeats: int) -> float:
    """Seconds for the fastest of `repeats` calls, after one warm-up call (allocator, oneDNN kernels)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ----------------------------------------------------------------------------- models

def mnist_backbone(spec: str, quick: bool) -> tuple[Backbone, str]:
    """The bundled/given model; in --quick mode a random model of the same architecture if it is missing
    (the bundled weights may still be training; timing does not depend on the weights' values)."""
    try:
        return load_backbone(spec), spec
    except DiffrepError as err:
        if not quick:
            raise DiffrepError(f"{err}\n(pass --mnist-model PATH to a diffusers folder, or --quick)") from err
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(32, 64, 128),
                       down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                       layers_per_block=1, norm_num_groups=8)
    return Backbone(unet.eval().requires_grad_(False), noise_form(DDPMScheduler())), \
        f"random UNet2DModel, mnist-ddpm architecture ({spec} not found)"


def latent_backbone() -> Backbone:
    """SD-shaped conditional UNet (cross-attention in three levels), random weights, no VAE/text encoder:
    `condition` then gives a zero empty-prompt embedding, which costs the same as a real one."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(64, 128, 256, 256),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=128, attention_head_dim=8, layers_per_block=2, norm_num_groups=32)
    return Backbone(unet.eval().requires_grad_(False), noise_form(DDPMScheduler()))


def n_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


# ----------------------------------------------------------------------------- part 1

def bench_extract(name: str, extract, batch: int, repeats: int) -> list[dict]:
    """images/s with and without early stop for each block; `extract(block, stop_early)` runs one batch."""
    rows = []
    for block in BLOCKS:
        early = best_time(lambda: extract(block, True), repeats)
        full = best_time(lambda: extract(block, False), repeats)
        rows.append({"model": name, "block": block, "batch": batch, "early_s": early, "full_s": full,
                     "early_img_per_s": batch / early, "full_img_per_s": batch / full, "speedup": full / early})
    return rows


def part1(args) -> tuple[list[dict], dict]:
    mnist_bb, mnist_src = mnist_backbone(args.mnist_model, args.quick)
    f = Featurizer(mnist_bb)
    images = torch.rand(args.mnist_batch, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rows = bench_extract("mnist-ddpm", lambda b, s: f.extract(images, T, [b], ensemble=1, seed=0, stop_early=s),
                         args.mnist_batch, args.repeats)

    latent_bb = latent_backbone()
    g = Featurizer(latent_bb)
    latents = torch.randn(args.latent_batch, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    rows += bench_extract("sd-shaped-latent", lambda b, s: g.extract_latents(latents, T, [b], ensemble=1, seed=0,
                                                                             stop_early=s),
                          args.latent_batch, args.repeats)
    models = {"mnist-ddpm": {"source": mnist_src, "params_M": n_params(mnist_bb.denoiser)},
              "sd-shaped-latent": {"source": "random UNet2DConditionModel, 4×32×32 latents (256² image), no VAE",
                                   "params_M": n_params(latent_bb.denoiser)}}
    return rows, models


# ----------------------------------------------------------------------------- part 2

def part2(args) -> list[dict]:
    """Seconds per pre-training step (the real DDPM loss, backward, AdamW) in fp32 and bf16 autocast."""
    cfg = PretrainConfig()
    x0 = torch.rand(args.train_batch, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rows = []
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_denoiser(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        loss_fn = DDPMLoss(noise_form(build_scheduler(cfg)))
        step_no = iter(range(10**9))

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = loss_fn(model, x0, torch.Generator().manual_seed(next(step_no)))
            loss.backward()  # outside autocast, as accelerate does
            opt.step()
            opt.zero_grad(set_to_none=True)

        rows.append({"precision": precision, "batch": args.train_batch, "step_s": best_time(step, args.repeats)})
    rows.append({"precision": "fp32/bf16", "batch": args.train_batch, "ratio": rows[0]["step_s"] / rows[1]["step_s"]})
    return rows


# ----------------------------------------------------------------------------- report

def machine() -> dict:
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(), "loadavg_at_start": os.getloadavg()}


def print_tables(extract_rows, models, train_rows, info, args) -> None:
    print(f"torch {info['torch']}, diffusers {info['diffusers']}, {info['threads']} threads, "
          f"{info['cpu_count']} CPUs ({info['processor']}), load average at start {info['loadavg_at_start'][0]:.2f}")
    print(f"best of {args.repeats} after a warm-up; t={T}, ensemble 1")
    for name, m in models.items():
        print(f"  {name}: {m['params_M']:.2f}M params — {m['source']}")
    print("\n1. feature extraction (images/s; the latent model's numbers exclude the VAE)")
    print(f"{'model':<18}{'block':<15}{'batch':>6}{'early img/s':>13}{'full img/s':>12}{'speed-up':>10}")
    for r in extract_rows:
        print(f"{r['model']:<18}{r['block']:<15}{r['batch']:>6}{r['early_img_per_s']:>13.1f}"
              f"{r['full_img_per_s']:>12.1f}{r['speedup']:>9.2f}×")
    print(f"\n2. pre-training step, mnist-ddpm architecture, batch {args.train_batch}, 32×32")
    print(f"{'precision':<12}{'s/step':>10}")
    for r in train_rows[:2]:
        print(f"{r['precision']:<12}{r['step_s']:>10.3f}")
    print(f"fp32/bf16 time ratio: {train_rows[2]['ratio']:.2f}×")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mnist-model", default="mnist-ddpm", help="bundled name or diffusers folder")
    p.add_argument("--out", default="benchmarks/results/featurizer.json")
    p.add_argument("--quick", action="store_true", help="tiny batches, one repeat: checks the script works")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own; 1 under --quick)")
    args = p.parse_args()
    # one thread keeps --quick fast on a busy machine: two processes each spinning 2 OpenMP threads on
    # 2 cores slow each other down several-fold
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    # batches from the design notes: 128 MNIST images, 8 latents (SD-sized work), 128 for training
    args.mnist_batch, args.latent_batch, args.train_batch = (8, 2, 8) if args.quick else (128, 8, 128)
    args.repeats = 1 if args.quick else args.repeats

    info = machine()
    extract_rows, models = part1(args)
    train_rows = part2(args)
    print_tables(extract_rows, models, train_rows, info, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "quick": args.quick, "repeats": args.repeats, "t": T,
                               "models": models, "extract": extract_rows, "pretrain_step": train_rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    try:
        main()
    except DiffrepError as err:  # a user mistake: the message says what to do, no traceback
        raise SystemExit(f"error: {err}")
