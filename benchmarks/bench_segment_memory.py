"""Peak memory and wall time of `diffrep segment train` on 50 labelled 128×128 images with a
≥ 2,000-channel pixel feature, beside what the reference implementation (ddpm-segmentation) would
need to hold every pixel feature in RAM as float32: N·C·H·W·4 bytes.

    python benchmarks/bench_segment_memory.py [--epochs 1] [--threads 2]

(OpenAI's ADM-256 at its real shape, converted from its own network: benchmarks/bench_adm256.py.)

The backbone is a randomly initialised UNet2DModel (widths 32/64/128/256, no attention; weights do
not change memory or time) whose mid block and first three up blocks at t ∈ {50, 150, 250} give
3 × (256 + 256 + 128 + 64) = 2,112 channels per pixel. The data are 50 bundled scenes rendered at
128×128, written as a user folder (images/ + masks/), so the folder reader is part of the run.
Training runs in a child process with K = 10 MLPs, 2,000 pixels asked per image (the 512 MB pool cap
then allows 1,271 at 2,112 channels), batch 64, and the given epoch count; its peak RSS is read with
getrusage(RUSAGE_CHILDREN). A second child that only imports diffrep and loads the model gives the
floor that any run of the command pays. Results: benchmarks/results/segment-memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

N_IMAGES, SIZE = 50, 128
WIDTHS = (32, 64, 128, 256)
BLOCKS = ["mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2"]
TS = [50, 150, 250]
RESULTS = Path(__file__).parent / "results" / "segment-memory.json"


def write_model(folder: Path) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(block_out_channels=WIDTHS, down_block_types=("DownBlock2D",) * 4, up_block_types=("UpBlock2D",) * 4,
                layers_per_block=1, sample_size=SIZE, in_channels=3, out_channels=3,
                add_attention=False).save_pretrained(folder / "unet")
    DDPMScheduler().save_pretrained(folder / "scheduler")


def write_data(folder: Path, n: int = N_IMAGES, size: int = SIZE) -> None:
    from diffrep.data.scenes import CLASSES, scenes

    images, masks = scenes("train", n, size=size)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(n):
        rgb = ((images[i] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(rgb).save(folder / "images" / f"{i:03d}.png")
        Image.fromarray(masks[i].numpy().astype(np.uint8)).save(folder / "masks" / f"{i:03d}.png")
    (folder / "classes.json").write_text(json.dumps(CLASSES))


def run_child(code: str, threads: int) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of `python -c code`, in a fresh child each time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.time()
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    wall = time.time() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak < before:   # ru_maxrss of children is the max over all children so far
        raise RuntimeError("unexpected RUSAGE_CHILDREN reading")
    return wall, peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (memory does not grow with them)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=N_IMAGES, help="labelled images")
    args = parser.parse_args()
    size, blocks, n_images, results = SIZE, BLOCKS, args.images, RESULTS
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_model(tmp / "model")
        write_data(tmp / "data", n_images, size)
        floor_code = (f"import torch; torch.set_num_threads({args.threads}); import diffrep.segment.ddpm_seg; "
                      f"from diffrep.core import load_backbone; load_backbone({str(tmp / 'model')!r})")
        floor_s, floor_mb = run_child(floor_code, args.threads)
        argv = ["segment", "train", "--model", str(tmp / "model"), "--data", str(tmp / "data"), "--labelled",
                str(n_images), "--out", str(tmp / "run"), "--blocks", ",".join(blocks), "--t", ",".join(map(str, TS)),
                "--max-epochs", str(args.epochs), "--pixels-per-image", "2000", "--pool-mb", "512", "--k", "10",
                "--no-baselines"]
        train_code = (f"import sys, torch; torch.set_num_threads({args.threads}); from diffrep.cli import main; "
                      f"sys.exit(main({argv!r}))")
        wall_s, peak_mb = run_child(train_code, args.threads)
        train = json.loads((tmp / "run" / "segment-train.json").read_text())
        cache_mb = sum(p.stat().st_size for p in (tmp / "run" / "cache").rglob("*")) / 2**20
    channels = train["heads"]["diffusion"]["channels"]
    reference_mb = n_images * channels * size * size * 4 / 2**20
    model = f"random UNet2DModel widths {list(WIDTHS)}, no attention"
    result = {"n_images": n_images, "size": size, "channels": channels, "blocks": blocks, "ts": TS,
              "model": model, "epochs": args.epochs,
              "threads": args.threads, "k": 10, "peak_rss_mb": round(peak_mb, 1), "wall_s": round(wall_s, 1),
              "import_and_load_floor_mb": round(floor_mb, 1), "reference_all_in_ram_mb": round(reference_mb, 1),
              "reference_over_ours": round(reference_mb / peak_mb, 1), "within_2gb": peak_mb <= 2048,
              "within_4gb": peak_mb <= 4096,
              "feature_cache_on_disk_mb": round(cache_mb, 1), "train_timing_s": train["timing_s"],
              "largest_feature_tensor_mb": train["largest_feature_tensor_mb"], "torch": torch.__version__}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2))
    print(f"segment train, {n_images} labelled {size}×{size} images, {channels} channels per pixel, "
          f"K=10, {args.epochs} epoch(s), {args.threads} thread(s)")
    print(f"  peak RSS          {peak_mb:8.0f} MB   (import + model load alone: {floor_mb:.0f} MB)")
    print(f"  wall time         {wall_s:8.1f} s")
    print(f"  reference in RAM  {reference_mb:8.0f} MB   (N·C·H·W·4 bytes) = {reference_mb / peak_mb:.1f}× ours")
    print(f"  feature cache     {cache_mb:8.0f} MB on disk (float16, maps at their own resolution)")
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
