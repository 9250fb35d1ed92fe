"""Choose DIFT's refinement on validation pairs: every setting of a grid scored on the same coarse matches.

    python benchmarks/refine_val.py --model photos-ddpm --benchmark warps --seed 1 --pairs 64 --ensemble 8 \
        [--out benchmarks/results/refine-val-warps.json]

The coarse matches (the match-eval defaults: the model's default block, t and scales) are made once per
pair; each fine describer (pixels, daisy) describes the pair once; then every (fine, radius, temperature,
coarse weight, mutual) setting refines the same coarse matches, so the rows differ by the refinement
alone. Seed 1 is the validation draw of the warps and geo pairs (match-eval scores test at seed 0).
Prints PCK at every α and the median end-point error per row, best PCK@0.01 first, and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from diffrep.correspond.dift import MatchEvalConfig, refiner
from diffrep.correspond.dift.describe import category_prompt, load_featurizer
from diffrep.correspond.dift.matching import Matches, describe_pair, match_maps
from diffrep.metrics import ALPHAS, score_matches

FINES = ("pixels", "daisy")
RADII = (2, 4, 8)
TEMPERATURES = (None, 0.01)
COARSE_WEIGHTS = (0.0, 0.5)
MUTUAL = (False, True)


def settings_grid(fines, radii) -> list[dict]:
    return [{"fine": f, "radius": r, "temperature": t, "coarse_weight": w, "mutual": m}
            for f, r, t, w, m in itertools.product(fines, radii, TEMPERATURES, COARSE_WEIGHTS, MUTUAL)]


def row_text(name: str, score: dict) -> str:
    pck = " ".join(f"{score[str(a)]['per_point']:5.1f}" for a in ALPHAS)
    return f"{name:52s} {pck}  {score['median_epe']['per_point']:5.2f} px"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="photos-ddpm")
    parser.add_argument("--benchmark", default="warps", choices=["warps", "geo"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--ensemble", type=int, default=8)
    parser.add_argument("--fines", default=",".join(FINES))
    parser.add_argument("--radii", default=",".join(map(str, RADII)))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    start = time.time()
    cfg = MatchEvalConfig(model=args.model, benchmark=args.benchmark, seed=args.seed, pairs=args.pairs,
                          ensemble=args.ensemble)
    pairs, size, _ = cfg.load_pairs()
    describer = cfg.describer(load_featurizer(cfg.model, cfg.device, cfg.precision))
    grid = settings_grid(args.fines.split(","), [int(r) for r in args.radii.split(",")])
    refiners = {f: refiner(describer, f, radius=1) for f in {s["fine"] for s in grid}}   # for the maps alone
    settings = {json.dumps(s): refiner(describer, s["fine"], radius=s["radius"], temperature=s["temperature"],
                                       coarse_weight=s["coarse_weight"], mutual=s["mutual"]) for s in grid}
    found: dict[str, list[Matches]] = {"coarse": [], **{name: [] for name in settings}}
    for i, pair in enumerate(pairs):
        source, target = pair.images()
        prompt = category_prompt(pair.category)
        (src, tgt), (fs, ft), _ = describe_pair(describer, source, target, size, prompt)
        coarse = match_maps(fs, src, ft, tgt, pair.source_points)
        found["coarse"].append(coarse)
        fine_maps = {f: r.maps([src.image, tgt.image], prompt) for f, r in refiners.items()}
        for name, fine in settings.items():
            refinement = fine.refinement(*fine_maps[json.loads(name)["fine"]])
            moved = refinement.apply(tgt.to_model(coarse.points), src.to_model(pair.source_points), src, tgt, (fs, ft))
            found[name].append(Matches(tgt.to_input(moved), coarse.similarity, None, coarse.points))
        print(f"pair {i + 1}/{len(pairs)} ({time.time() - start:.0f} s)", flush=True)
    scores = {name: score_matches(pairs, m) for name, m in found.items()}
    order = sorted(scores, key=lambda n: -scores[n]["0.01"]["per_point"])
    for name in order:
        print(row_text(name, scores[name]))
    result = {"model": args.model, "benchmark": args.benchmark, "seed": args.seed, "pairs": len(pairs),
              "n_points": sum(len(p.source_points) for p in pairs), "ensemble": args.ensemble,
              "block": describer.blocks[0], "t": describer.t, "scales": list(describer.scales),
              "threads": torch.get_num_threads(), "seconds": round(time.time() - start, 1),
              "rows": [{"settings": None if n == "coarse" else json.loads(n), **scores[n]} for n in order]}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
