"""OpenAI's ADM 256×256 unconditional network at its real shape (random weights), through diffrep's
guided-diffusion path: conversion, `diffrep info`, feature extraction with and without the early stop,
and DDPM-Seg's `segment train` on 20 labelled images with the FFHQ-34 settings; with `--end-to-end`,
also `classify` (attention and feedback heads, diffssl's settings) and `match` (DIFT's ADM setting) on
a few photographs, to show they run at this shape (their accuracy on random weights means nothing).

    python benchmarks/bench_adm256.py [--images 20] [--threads 2] [--skip-segment] [--end-to-end]

The checkpoint is written by OpenAI's own `guided_diffusion.script_util.create_model` with the
preset's flags (its default initialisation; weights change neither time nor memory) and saved as a
plain state dict, as the published files are. Each step runs in a fresh child process; its peak RSS is
read from getrusage(RUSAGE_CHILDREN) of a child that runs only that step. The labelled images are
bundled scenes written in DDPM-Seg's own layout (PNG beside a same-stem .npy label array).
Results: benchmarks/results/adm256.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

RESULTS = Path(__file__).parent / "results" / "adm256.json"
PRESET = "adm-256-uncond"


def run_child(code: str, threads: int, env_extra: dict | None = None) -> dict:
    """Wall seconds and peak RSS (MB) of `python -c code` in a fresh child, plus what it printed as JSON
    on its last line (if anything)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    wrapper = ("import resource, subprocess, sys, json, time; t = time.time(); "
               f"p = subprocess.run([sys.executable, '-c', {code!r}], capture_output=True, text=True); "
               "print(p.stdout[-4000:]); print(p.stderr[-4000:], file=sys.stderr); "
               "print(json.dumps({'rc': p.returncode, 'wall_s': time.time() - t, "
               "'peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    done = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    stats = json.loads(lines[-1])
    if stats["rc"]:
        raise RuntimeError(f"child failed:\n{done.stderr[-3000:]}")
    printed = [line for line in lines[:-1] if line.startswith("{")]
    return {**stats, **(json.loads(printed[-1]) if printed else {})}


def write_checkpoint(path: Path) -> int:
    from guided_diffusion.script_util import create_model

    from diffrep.convert.guided_diffusion import PRESETS, parse_flags
    settings = dict(parse_flags(PRESETS[PRESET][0]).__dict__)
    for key in ("diffusion_steps", "noise_schedule", "predict_xstart"):
        settings.pop(key)
    torch.manual_seed(0)
    model = create_model(**settings)
    torch.save(model.state_dict(), path)
    return sum(p.numel() for p in model.parameters())


def write_ddpm_seg_layout(folder: Path, n: int, size: int = 256) -> None:
    """n bundled scenes as DDPM-Seg stores its data: image_K.png beside image_K.npy (integer labels)."""
    from diffrep.data.scenes import scenes
    images, masks = scenes("train", n + 4, size=size)
    for split, items in (("train", range(n)), ("test", range(n, n + 4))):
        (folder / "real" / split).mkdir(parents=True)
        for i in items:
            rgb = ((images[i] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(rgb).save(folder / "real" / split / f"image_{i}.png")
            np.save(folder / "real" / split / f"image_{i}.npy", masks[i].numpy().astype(np.int64))


def write_class_folder(folder: Path, per_class: dict, size: int = 256) -> None:
    """Two classes of 256×256 crops (scikit-image's astronaut and cat photographs), train/ and test/."""
    from skimage import data as photos
    sources = {"astronaut": photos.astronaut(), "chelsea": photos.chelsea()}
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for name, photo in sources.items():
            (folder / split / name).mkdir(parents=True)
            for i in range(n):
                side = int(rng.integers(min(photo.shape[:2]) // 2, min(photo.shape[:2])))
                y, x = (int(rng.integers(0, d - side + 1)) for d in photo.shape[:2])
                crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)
                crop.save(folder / split / name / f"{i}.png")


def cli(argv: list[str]) -> str:
    return f"import sys; from diffrep.cli import main; sys.exit(main({argv!r}))"


EXTRACT = """
import json, time, torch
from diffrep.core import Featurizer, load_backbone
torch.manual_seed(0)
f = Featurizer(load_backbone({model!r}, preset={preset!r}))
x = torch.rand({n}, 3, 256, 256) * 2 - 1
out = {{}}
for name, stop in (("early_stop", True), ("full_forward", False)):
    f.extract(x[:1], 150, "24", stop_early=stop)   # warm-up
    t = time.time(); f.extract(x, 150, "24", stop_early=stop); out[name + "_s_per_image"] = (time.time() - t) / {n}
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20, help="labelled images for segment train (DDPM-Seg: 20)")
    parser.add_argument("--extract-images", type=int, default=2, help="images timed for the early stop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-segment", action="store_true")
    parser.add_argument("--extract-batch", type=int, default=None, help="segment train's --extract-batch "
                                                                          "(default: the command's own, 8)")
    parser.add_argument("--end-to-end", action="store_true", help="also run classify and match at this shape")
    args = parser.parse_args()
    result = {"preset": PRESET, "threads": args.threads, "machine": platform.processor() or platform.machine(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "adm256.pt"
        result["parameters"] = write_checkpoint(ckpt)
        cache = {"DIFFREP_CACHE": str(tmp / "cache")}
        result["convert"] = run_child(cli(["convert", "guided-diffusion", str(ckpt), "--preset", PRESET,
                                           "--out", str(tmp / "converted")]), args.threads)
        print("convert", result["convert"])
        info = ["info", "--model", str(ckpt), "--preset", PRESET, "--json", str(tmp / "info.json")]
        result["info_first"] = run_child(cli(info), args.threads, cache)       # converts into the cache
        result["info_cached"] = run_child(cli(info), args.threads, cache)
        rows = json.loads((tmp / "info.json").read_text())
        result["info_blocks"] = len(rows)
        result["output_blocks.6"] = next(r["name"] for r in rows if r["guided_diffusion"] == "output_blocks.6")
        print("info", result["info_first"], result["info_cached"])
        code = EXTRACT.format(model=str(ckpt), preset=PRESET, n=args.extract_images)
        result["extract_block_24_t150"] = run_child(code, args.threads, cache)
        print("extract", result["extract_block_24_t150"])
        if not args.skip_segment:
            write_ddpm_seg_layout(tmp / "ffhq_like", args.images)
            argv = ["segment", "train", "--model", str(ckpt), "--preset", PRESET, "--reference", "ffhq_34",
                    "--data", str(tmp / "ffhq_like"), "--labelled", str(args.images), "--no-baselines",
                    "--out", str(tmp / "seg")]
            argv += ["--extract-batch", str(args.extract_batch)] if args.extract_batch else []
            key = f"segment_train_extract_batch_{args.extract_batch or 8}"
            result[key] = run_child(cli(argv), args.threads, cache)
            train = json.loads((tmp / "seg" / "segment-train.json").read_text())
            config = json.loads((tmp / "seg" / "config.json").read_text())
            result[key].update(channels=train["heads"]["diffusion"]["channels"], timing_s=train["timing_s"],
                               blocks=config["blocks"], ts=config["ts"], reference=config.get("reference"))
            print("segment train", result[key])
        if args.end_to_end:
            result.update(end_to_end(tmp, ckpt, args.threads, cache))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    RESULTS.write_text(json.dumps({**earlier, **result}, indent=2))   # a partial run keeps the other steps' figures
    print(f"wrote {RESULTS}")


def end_to_end(tmp: Path, ckpt: Path, threads: int, cache: dict) -> dict:
    """`classify` (attention + feedback, diffssl's blocks and pairs) and `match` (DIFT's ADM setting)."""
    model = ["--model", str(ckpt), "--preset", PRESET]
    write_class_folder(tmp / "crops", {"train": 4, "test": 2})
    classify = run_child(cli(["classify", *model, "--reference", "diffssl", "--data", str(tmp / "crops"),
                              "--heads", "attention,feedback", "--epochs", "1", "--width", "64", "--batch-size", "4",
                              "--train-batch", "4", "--no-baselines", "--out", str(tmp / "cls")]), threads, cache)
    report = json.loads((tmp / "cls" / "classify.json").read_text())
    classify.update(resolved=report["reference"]["resolved"], heads=[row.get("head") for row in report["heads"]],
                    n_train=report["n_train"], n_test=report["n_test"])
    print("classify", classify)
    src, tgt = tmp / "crops" / "test" / "astronaut" / "0.png", tmp / "crops" / "test" / "astronaut" / "1.png"
    match = run_child(cli(["match", str(src), str(tgt), *model, "--reference", "dift-adm", "--ensemble", "2",
                           "--points", "64,64;128,128;200,90", "--out", str(tmp / "match.png")]), threads, cache)
    record = json.loads((tmp / "match.json").read_text())
    match.update({k: record.get(k) for k in ("block", "t", "ensemble", "size", "reference")},
                 matches=len(record["matches"]))
    print("match", match)
    return {"classify_attention_feedback": classify, "match_dift_adm_ensemble2": match}


if __name__ == "__main__":
    main()
