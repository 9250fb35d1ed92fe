"""How much digit identity do a backbone's features carry on the bundled scenes? A diagnostic for
the DDPM-Seg gap (every method finds the digits; telling them apart is what is missing).

    python benchmarks/bench_scene_identity.py [--model scenes-ddpm] [--scenes 600]

For every digit instance in `--scenes` validation scenes (the scenes train split from index
`diffrep.data.masks.VAL_START`, never labelled and never the test split), each (t, block) map is upsampled
to the scene, averaged over the instance's mask, and a linear probe (diffrep.heads, standardised,
L2 strength chosen on validation) learns the digit from the first ¾ of the scenes' instances; the
last ¼ of the scenes score it. The same for the architecture with random weights. The probe is fit
on 30 instances (about what 20 labelled scenes hold), 300, and all, so the table says whether more
labels or better features are what the segmentation needs. The printed best cell is the best on the
scored scenes, an optimistic ceiling for diagnosis, not a choice any method uses. Results:
benchmarks/results/scene-identity-<model>.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffrep.core import Featurizer, load_backbone, random_init
from diffrep.data import match_channels
from diffrep.data.masks import VAL_START
from diffrep.data.scenes import scenes
from diffrep.heads import train_probe_grid
from diffrep.runs import write_json

TS = [50, 150, 250, 400]
BLOCKS = ["down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1"]
MIN_PIXELS = 20   # instances mostly hidden by another digit are left out


def instance_features(featurizer: Featurizer, images: torch.Tensor, masks: torch.Tensor, prefix: str,
                      batch: int = 50) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """({prefix + 't=../block': I×C mask-averaged features}, digit labels, scene index) per instance."""
    feats, labels, scene = {}, [], []
    for s in range(0, len(images), batch):
        x, m = images[s:s + batch], masks[s:s + batch]
        maps = {}
        for t in TS:
            for block, f in featurizer.extract(x, t, BLOCKS, seed=0, shared_noise=True).items():
                maps[f"{prefix}t={t}/{block}"] = F.interpolate(f.float(), size=m.shape[-2:], mode="bilinear",
                                                                 align_corners=False)
        for i in range(len(x)):
            for c in m[i].unique().tolist():
                region = m[i] == c
                if c == 0 or region.sum() < MIN_PIXELS:
                    continue
                for key, v in maps.items():
                    feats.setdefault(key, []).append(v[i][:, region].mean(1))
                labels.append(c - 1)
                scene.append(s + i)
    return {k: torch.stack(v) for k, v in feats.items()}, torch.tensor(labels), torch.tensor(scene)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="scenes-ddpm")
    ap.add_argument("--scenes", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    images, masks = scenes("train", args.scenes, start=VAL_START)
    backbone = load_backbone(args.model)
    images = match_channels(images, backbone.image_channels)   # grey for mnist-ddpm, as `diffrep segment` does
    feats, labels, scene = instance_features(Featurizer(backbone), images, masks, "")
    random_feats, _, _ = instance_features(Featurizer(random_init(backbone, 0)), images, masks, "random/")
    feats.update(random_feats)
    cut = int(args.scenes * 0.75)
    fit, val = torch.nonzero(scene < cut).flatten(), torch.nonzero(scene >= cut).flatten()
    print(f"{len(labels)} digit instances in {args.scenes} scenes ({len(fit)} to fit, {len(val)} to score); "
          f"features {time.time() - start:.0f} s")
    rows = {}
    for n_fit in (30, 300, len(fit)):
        # the probe's own L2 choice needs a held-out part: the last eighth of the fit instances
        chosen = fit[:n_fit]
        inner = max(1, len(chosen) // 8)
        scores = train_probe_grid(feats, labels, {k: v[val] for k, v in feats.items()}, labels[val],
                                  split=(chosen[:-inner], chosen[-inner:]), epochs=100, batch_size=64)
        rows[n_fit] = {k: round(100 * v["accuracy"], 1) for k, v in scores.items()}
        best = max((k for k in rows[n_fit] if not k.startswith("random/")), key=rows[n_fit].get)
        best_random = max((k for k in rows[n_fit] if k.startswith("random/")), key=rows[n_fit].get)
        print(f"fit on {n_fit:4d} instances: best trained {best} {rows[n_fit][best]:.1f}%, "
              f"best random-weight {best_random[7:]} {rows[n_fit][best_random]:.1f}% (chance 10%)")
    result = {"model": args.model, "scenes": args.scenes, "instances": len(labels), "scored": len(val),
              "ts": TS, "blocks": BLOCKS, "accuracy_by_fit_instances": rows, "time_s": round(time.time() - start, 1)}
    path = write_json(Path(args.out) / f"scene-identity-{Path(args.model).name}.json", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
