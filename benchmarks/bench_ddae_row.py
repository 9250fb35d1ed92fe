"""The DDAE row of the survey: a DDPM and an EDM objective, a UNet and a DiT, each pre-trained with
`diffrep pretrain` under the same budget (steps × batch, the bundled mnist-ddpm's recipe), then the
t × block probe sweep on each, read off its chosen cell (chosen on train) and final test accuracy.

    python benchmarks/bench_ddae_row.py --out runs/ddae-row [--steps 7500] [--models ddpm-unet,edm-unet,ddpm-dit,edm-dit]
        [--data mnist] [--pretrain-args "--batch-size 128"] [--sweep-args "--blocks mid_block --pools 1,2"]

Runs the two commands as a user would (`diffrep pretrain`, then `diffrep sweep`), each resumable:
a model folder that is complete is reused and a sweep run that finished is read. EDM models are
swept at the σ matching the DDPM sweep's timesteps, σ(t) = √((1 − ᾱ_t)/ᾱ_t) under the linear β schedule,
so every row reads the same noise levels. Writes <out>/ddae-row.json and prints the table.
On the 2-core CPU one 7,500-step UNet run takes about 96 minutes: run it on a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from diffusers import DDPMScheduler

from diffrep.classify.ddae import DEFAULT_TS
from diffrep.options import csv_of
from diffrep.runs import write_json

MODELS = {"ddpm-unet": ("ddpm", "unet"), "edm-unet": ("edm", "unet"), "ddpm-dit": ("ddpm", "dit"),
          "edm-dit": ("edm", "dit")}
RECIPE = ["--widths", "32,64,64", "--layers-per-block", "2", "--shift", "2"]   # mnist-ddpm's


def matching_sigmas(ts: list[int]) -> list[float]:
    """σ of an EDM model at the noise level of each DDPM timestep (linear β, 1,000 steps)."""
    ab = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    return [round(float(((1 - ab[t]) / ab[t]).sqrt()), 4) for t in ts]


def run(args: list[str]) -> float:
    start = time.time()
    print("$ diffrep " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "diffrep.cli", *args], check=True)
    return round(time.time() - start, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=7500)
    ap.add_argument("--models", type=csv_of(str), default=list(MODELS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default="mnist", help="'mnist' or a class-folder data set, for pre-training and sweep")
    ap.add_argument("--pretrain-args", default="", help="more `diffrep pretrain` options, the same for every model")
    ap.add_argument("--sweep-args", default="", help="more `diffrep sweep` options (not --t: see --ts)")
    ap.add_argument("--ts", type=csv_of(int), default=DEFAULT_TS,
                    help="DDPM timesteps of the sweep; EDM models are swept at the matching σ")
    a = ap.parse_args()
    if "--t" in a.sweep_args.split():
        ap.error("--sweep-args must not hold --t: pass the DDPM timesteps as --ts (EDM gets the matching σ)")
    out = Path(a.out)
    rows = []
    for name in a.models:
        objective, arch = MODELS[name]
        pre, sweep = out / name, out / f"{name}-sweep"
        model = pre / "model"   # the diffusers folder `diffrep pretrain` writes
        pre_s = 0.0
        if not (pre / "pretrain.json").exists() or json.loads((pre / "pretrain.json").read_text())["steps"] < a.steps:
            resume = ["--resume"] if (pre / "config.json").exists() else []
            pre_s = run(["pretrain", "--data", a.data, *RECIPE, *a.pretrain_args.split(), "--objective", objective, "--arch", arch, "--steps", str(a.steps),
                         "--device", a.device, "--out", str(pre), *resume])
        ts = a.ts if objective == "ddpm" else matching_sigmas(a.ts)
        sweep_s = 0.0
        if not (sweep / "sweep.json").exists():
            sweep_s = run(["sweep", "--model", str(model), "--data", a.data, "--t", ",".join(map(str, ts)),
                           "--device", a.device, *a.sweep_args.split(), "--out", str(sweep)])
        result = json.loads((sweep / "sweep.json").read_text())
        best = result["best"]
        rows.append({"model": name, "objective": objective, "arch": arch, "steps": a.steps,
                     "chosen": {"t": best["t"], "block": best["block"], "pool": best["pool"]},
                     "cv_accuracy": best.get("cv_accuracy"), "grid_accuracy": best["accuracy"],
                     "final_accuracy": (best.get("augmented") or {}).get("accuracy", best["accuracy"]),
                     "pixels": result["baselines"]["pixels"], "random_weights": result["baselines"]["random_init"],
                     "pretrain_s": pre_s, "sweep_s": sweep_s})
        write_json(out / "ddae-row.json", {"steps": a.steps, "data": a.data, "ts_ddpm": a.ts,
                                           "pretrain_args": a.pretrain_args, "sweep_args": a.sweep_args, "rows": rows})
    print(f"{'model':<11}{'chosen cell':<36}{'final %':>8}{'pixels %':>9}{'random %':>9}")
    for r in rows:
        c = r["chosen"]
        print(f"{r['model']:<11}{'t=%s %s %d×%d' % (c['t'], c['block'], c['pool'], c['pool']):<36}"
              f"{100 * r['final_accuracy']:>8.1f}{100 * r['pixels']:>9.1f}{100 * r['random_weights']:>9.1f}")
    print(f"wrote {out / 'ddae-row.json'}")


if __name__ == "__main__":
    main()
