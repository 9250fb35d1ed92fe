"""Does augmenting the final probe's fit set help, and with what? Cross-validation on the train split
only: this is how the sweep's `--augment` default and distortions were chosen.

    python benchmarks/bench_probe_augment.py [--model mnist-ddpm] [--copies 0,4,16,32,64]

For each cell (default t = 25 on `mid_block` and `up_blocks.0`, 4×4 pool: the sweep's best region),
5-fold cross-validation over the 4,000 bundled MNIST train digits: each fold's linear probe is fit on
its digits plus m distorted copies of them (never copies of the held-out digits, `heads.
cross_validated_accuracy(copies=...)`) and scores the held-out fifth, for shift-only copies (±2 px,
the sweep's earlier default) and the full distortion (`data.Distortion()`: rotation, scale, shear,
shift, elastic). The test split is not loaded. Features fp32, as the sweep's. Results:
benchmarks/results/probe-augment-<model>.json.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import torch

from diffrep.core import Featurizer, load_backbone
from diffrep.data import Distortion, mnist, random_distort
from diffrep.features import DiffusionFeatures, collect_features
from diffrep.heads import cross_validated_accuracy
from diffrep.options import csv_of
from diffrep.runs import write_json

KINDS = {"shift only": Distortion(rotate=0, scale=0, shear=0, shift=2, elastic=0), "full distortion": Distortion()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mnist-ddpm")
    ap.add_argument("--t", type=int, default=25)
    ap.add_argument("--blocks", type=csv_of(str), default=["mid_block", "up_blocks.0"])
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--copies", type=csv_of(int), default=[0, 4, 16, 32, 64])
    ap.add_argument("--weight-decay", type=float, default=1e-3, help="the sweep's choice for these cells")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    train = mnist("train")
    featurizer = Featurizer(load_backbone(args.model))
    def features(images, seed, desc):
        source = DiffusionFeatures(featurizer, args.blocks, [args.t], seed=seed)
        # keyed by the cells' file names ("t=25/mid_block/pool=4"), as the results file has always named them
        return {cell.key(): v for cell, v in collect_features(source, images, [args.pool], desc=desc).items()}
    plain = features(train.images, 0, "train digits")
    decay = dict.fromkeys(plain, args.weight_decay)
    n, most = len(train.labels), max(args.copies)
    rows = []
    def report(kind, m, distortion, copies):
        cv = cross_validated_accuracy(plain, train.labels, decay, copies=copies)
        rows.append({"kind": kind, "copies": m, "distortion": asdict(distortion) if distortion else None,
                     "cv_accuracy": {k: round(100 * v, 2) for k, v in cv.items()}})
        print(f"{kind:>16} × {m:2d}: " + ", ".join(f"{k} {v:.2f}%" for k, v in rows[-1]["cv_accuracy"].items())
              + f"  ({time.time() - start:.0f} s)", flush=True)
    if 0 in args.copies:
        report("none", 0, None, None)
    for kind, distortion in KINDS.items():
        if most == 0:
            break
        gen = torch.Generator().manual_seed(0)
        copies = features(torch.cat([random_distort(train.images, distortion, gen) for _ in range(most)]), 1, kind)
        for m in sorted(set(args.copies) - {0}):
            report(kind, m, distortion, {k: v[:m * n] for k, v in copies.items()})
    result = {"model": args.model, "t": args.t, "blocks": args.blocks, "pool": args.pool, "folds": 5,
              "train_digits": len(train.labels), "weight_decay": args.weight_decay, "rows": rows,
              "time_s": round(time.time() - start, 1)}
    path = write_json(Path(args.out) / f"probe-augment-{Path(args.model).name}.json", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
