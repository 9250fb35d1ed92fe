"""Benchmarks at the shapes users run, with published configurations and random weights (no
checkpoint can be downloaded here; weights change neither time nor memory).

    python benchmarks/bench_real_shapes.py sd21  [--images 2] [--device cpu] [--precision fp32]
    python benchmarks/bench_real_shapes.py scale [--sizes 2000,20000]

- `sd21`: a Stable-Diffusion-2.1-shaped pipeline folder (UNet 320/640/1280/1280 with 1,024-wide
  cross-attention, its VAE, a CLIP text encoder of its size: 1,024 wide, 23 layers) written to disk
  and loaded by `load_backbone` like any checkpoint; DIFT's defaults for it (`up_blocks.1`, t = 261)
  at 512×512: the block catalogue's time, images per second through the VAE and the denoiser with
  the early stop against the whole forward, and peak memory (RSS; on CUDA also the allocator's peak).
- `scale`: `diffrep features` (mnist-ddpm, 2 blocks, 1 t, pooled 2×2) over image folders of 2,000 and
  20,000 PNGs, each in a fresh child process: peak RSS and images per second against data-set size.

Results: benchmarks/results/real-shapes-<name>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from diffrep.stages import matmul_rate

RESULTS = Path(__file__).parent / "results"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- SD-2.1

def write_sd21(folder: Path) -> None:
    """stabilityai/stable-diffusion-2-1's published configs (unet, vae, scheduler, text encoder), random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
                         block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                         cross_attention_dim=1024, use_linear_projection=True,
                         down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                         up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3).save_pretrained(folder / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=768,
                  block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215).save_pretrained(folder / "vae")
    DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  prediction_type="v_prediction").save_pretrained(folder / "scheduler")
    CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                 num_attention_heads=16, projection_dim=512, hidden_act="gelu",
                                 max_position_embeddings=77)).save_pretrained(folder / "text_encoder")
    # a tokenizer of a few letters: the prompt is tokenised once; the encoder's size is what costs
    tokens = list("!aphotfcrsdgenilmuwy")
    vocab = {t: i for i, t in enumerate(tokens + [t + "</w>" for t in tokens])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "tokenizer" / "vocab.json"), str(folder / "tokenizer" / "merges.txt"),
                  model_max_length=77).save_pretrained(folder / "tokenizer")


def photo(size: int) -> torch.Tensor:
    from skimage import data

    im = Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)


def timed(fn, device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.time() - start, out


def bench_sd21(args) -> dict:
    from diffrep import Featurizer, load_backbone
    from diffrep.correspond.dift.describe import DiffusionDescriber

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or tmp) / "sd21"
        if not (folder / "unet").is_dir():
            print(f"writing an SD-2.1-shaped pipeline to {folder}")
            write_sd21(folder)
        rss_before = rss_mb()
        load_s, backbone = timed(lambda: load_backbone(folder, args.device, args.precision), torch.device("cpu"))
        device = backbone.device
        featurizer = Featurizer(backbone)
        info_s, info = timed(featurizer.feature_info, device)
        describer = DiffusionDescriber(featurizer, precision=args.precision, ensemble=1)
        block, t = describer.blocks[0], describer.t
        images = photo(512)[None].repeat(args.images, 1, 1, 1)
        rows = {}
        with FlopCounterMode(display=False) as counter:   # torch's count of one image's early-stop extraction
            featurizer.extract(images[:1], t, [block], precision=args.precision)
        gflop = counter.get_total_flops() / 1e9
        rate = matmul_rate(device, args.precision)
        for name, early in (("early_stop", True), ("full_forward", False)):
            featurizer.extract(images[:1], t, [block], precision=args.precision, stop_early=early)   # warm-up
            secs, _ = timed(lambda: [featurizer.extract(images[i:i + 1], t, [block], precision=args.precision,
                                                        stop_early=early) for i in range(len(images))], device)
            rows[name] = {"s_per_image": round(secs / len(images), 2), "images_per_s": round(len(images) / secs, 3)}
            print(f"  {name:13s} {secs / len(images):7.2f} s per 512×512 image (VAE + denoiser)")
        featurizer.extract(images, t, [block], precision=args.precision)   # warm-up at the batch's shapes
        secs, _ = timed(lambda: featurizer.extract(images, t, [block], precision=args.precision), device)
        rows["early_stop_batched"] = {"batch": len(images), "s_per_image": round(secs / len(images), 3),
                                      "images_per_s": round(len(images) / secs, 3),
                                      "matmul_fraction": round(gflop * len(images) / secs / rate, 3)}
        print(f"  batch of {len(images)}: {len(images) / secs:.2f} images/s, {gflop * len(images) / secs:.0f} GFLOP/s, "
              f"{100 * gflop * len(images) / secs / rate:.0f}% of the {rate:.0f} GFLOP/s matmul rate")
        enc_s, _ = timed(lambda: backbone.encode(images[:1].to(device)), device)
        params = {n: sum(p.numel() for p in m.parameters()) / 1e6 for n, m in
                  (("unet", backbone.denoiser), ("vae", backbone.vae), ("text_encoder", backbone.text_encoder))}
    result = {"model": "SD-2.1-shaped pipeline, random weights", "params_m": {k: round(v, 1) for k, v in params.items()},
              "device": str(device), "precision": args.precision, "torch_threads": torch.get_num_threads(),
              "image": "512×512", "block": block, "t": t, "images": args.images,
              "load_s": round(load_s, 1), "block_catalogue_s": round(info_s, 2), "blocks_in_catalogue": len(info),
              "vae_encode_s": round(enc_s, 2), "gflop_per_image": round(gflop, 1),
              "matmul_gflop_per_s": round(rate, 1), **rows,
              "early_stop_speedup": round(rows["full_forward"]["s_per_image"] / rows["early_stop"]["s_per_image"], 2),
              "peak_rss_mb": round(rss_mb(), 0), "rss_before_load_mb": round(rss_before, 0)}
    if device.type == "cuda":
        result["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 0)
    return result


# ----------------------------------------------------------------------------- data-set size

def write_digits(folder: Path, n: int) -> None:
    """n PNGs in class sub-folders: the bundled MNIST digits, each repeat shifted by a pixel or two so
    that no two files are the same image."""
    from diffrep.data import mnist

    data = mnist("all")
    digits = ((data.images[:, 0] + 1) * 127.5).round().byte().numpy()
    for i in range(n):
        j, r = i % len(digits), i // len(digits)
        img = np.roll(digits[j], (r % 3 - 1, r // 3 % 3 - 1), axis=(0, 1))
        sub = folder / str(int(data.labels[j]))
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(sub / f"{i:06d}.png")


def bench_scale(args) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            data = Path(tmp) / f"digits-{n}"
            write_digits(data, n)
            out = Path(tmp) / f"feats-{n}"
            cmd = [sys.executable, "-m", "diffrep.cli", "features", "--model", "mnist-ddpm", "--data", str(data),
                   "--splits", "train,test", "--blocks", "mid_block,up_blocks.0", "--t", "25", "--pool", "2",
                   "--workers", str(args.workers), "--out", str(out)] + \
                (["--shard-size", str(args.shard_size)] if args.shard_size else [])
            print(f"diffrep features over {n} images")
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            summary = json.loads((out / "features.json").read_text())
            rows.append({"images": n, "shards": sum(s["shards"] for s in summary["splits"].values()),
                         "peak_rss_mb": summary["peak_rss_mb"],
                         "images_per_s": summary["images_per_s"], "total_s": summary["timing_s"]["total"]})
            print(f"  {rows[-1]}")
    return {"command": "diffrep features --model mnist-ddpm --blocks mid_block,up_blocks.0 --t 25 --pool 2 "
                       f"--splits train,test --workers {args.workers}" +
                       (f" --shard-size {args.shard_size}" if args.shard_size else ""), "rows": rows,
            "rss_ratio_largest_over_smallest": round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="which", required=True)
    sd = sub.add_parser("sd21")
    sd.add_argument("--images", type=int, default=2)
    sd.add_argument("--device", default="cpu")
    sd.add_argument("--precision", default="fp32")
    sd.add_argument("--folder", default=None, help="keep the written pipeline here (default: a temporary folder)")
    sc = sub.add_parser("scale")
    sc.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[2000, 20000])
    sc.add_argument("--workers", type=int, default=1)
    sc.add_argument("--shard-size", type=int, default=None, help="images per shard (default: diffrep's)")
    args = parser.parse_args()
    result = {"sd21": bench_sd21, "scale": bench_scale}[args.which](args)
    result["torch"] = torch.__version__
    name = f"real-shapes-{args.which}" + (f"-{args.device.replace(':', '')}-{args.precision}" if args.which == "sd21" else "")
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
