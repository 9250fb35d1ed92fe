"""How long DIFT matching takes on two 256×256 photographs, what the chunked similarity costs, and what
refinement adds.

    python benchmarks/bench_match.py --model photos-ddpm [--threads 2] [--out benchmarks/results/match-bench.json]
        [--refine pixels,daisy --refine-radius 8 --refine-coarse-weight 0 --no-refine-mutual]

Times (best of 3 after a warm-up; t = 10, the default block): the features of both images (ensemble 1 and 4, fp32 and bf16), the
nearest-neighbour search for 16 points, and the dense flow at 128×128 with chunk sizes 1024 and 16384
(same result; the chunk bounds memory, not the answer). The images are crops of scikit-image's stereo
motorcycle pair, a real left/right view.

Refinement: `match` with the `match` command's default describer (its block, t, ensemble and scales),
without and with `--refine` for each fine level, and the ratio of the two times (the issue's bound: at
most 2×); and the dense flow at 128×128 refined, against the coarse flow.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench_featurizer import best_time  # the same timing rule: fastest of n calls after a warm-up
from diffrep.core import Featurizer, load_backbone
from diffrep.correspond.dift import DiffusionDescriber, dense_flow, match, prepare, refiner
from diffrep.correspond.dift.cli import MatchConfig
from diffrep.data.photos import photo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="photos-ddpm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/match-bench.json")
    parser.add_argument("--refine", default="pixels,daisy", help="fine levels to time, comma-separated")
    parser.add_argument("--refine-radius", type=int, default=8)   # half of mid_block's 16 px cell, as match's default
    parser.add_argument("--refine-temperature", type=float, default=None)
    parser.add_argument("--refine-coarse-weight", type=float, default=0.0)
    parser.add_argument("--no-refine-mutual", dest="refine_mutual", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    source = photo("motorcycle_left")[:, 100:356, 200:456]
    target = photo("motorcycle_right")[:, 100:356, 190:446]
    points = torch.stack(torch.meshgrid(torch.arange(4) * 64 + 32.0, torch.arange(4) * 64 + 32.0, indexing="xy"), -1)
    points = points.reshape(-1, 2)
    featurizer = Featurizer(load_backbone(args.model))
    rows = []
    for ensemble in (1, 4):
        for bf16 in (False, True):
            describer = DiffusionDescriber(featurizer, None, 10, ensemble, precision="bf16" if bf16 else "fp32")
            seconds = round(best_time(lambda: match(describer, source, target, points), 3), 3)  # noqa: B023
            rows.append({"what": "match 16 points, 256×256 pair", "block": describer.blocks[0], "ensemble": ensemble,
                         "bf16": bf16, "seconds": seconds})
            print(rows[-1])
    describer = DiffusionDescriber(featurizer, None, 10, 1)
    small = [prepare(im[:, ::2, ::2], describer.stride) for im in (source, target)]
    maps = [d[describer.blocks[0]] for d in describer.describe([p.image for p in small])]
    for chunk in (1024, 16384):
        flow = lambda: dense_flow(maps[0], small[0], maps[1], small[1], chunk=chunk)  # noqa: B023, E731
        seconds = round(best_time(flow, 1), 3)
        rows.append({"what": "dense flow 128×128 → 128×128", "chunk": chunk, "seconds": seconds,
                     "similarity_block_MB": round(min(chunk, 128 * 128) ** 2 * 4 / 2**20, 1)})
        print(rows[-1])
    rows += refinement_rows(featurizer, args, source, target, points)
    result = {"model": args.model, "threads": args.threads, "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def refinement_rows(featurizer, args, source, target, points) -> list[dict]:
    """`match` coarse and refined with the command's default describer, and the dense flow refined."""
    describer = MatchConfig(model=args.model, precision="fp32").describer(featurizer)   # as the rows above
    coarse = round(best_time(lambda: match(describer, source, target, points), 3), 3)
    rows = [{"what": "match 16 points, 256×256 pair, match's defaults", "block": describer.blocks[0],
             "t": describer.t, "ensemble": describer.ensemble, "scales": list(describer.scales), "seconds": coarse}]
    print(rows[-1])
    small = [prepare(im[:, ::2, ::2], describer.stride) for im in (source, target)]
    maps = [d[describer.blocks[0]] for d in describer.describe([p.image for p in small])]
    flow = round(best_time(lambda: dense_flow(maps[0], small[0], maps[1], small[1]), 1), 3)
    for fine in args.refine.split(","):
        refine = refiner(describer, fine, radius=args.refine_radius, temperature=args.refine_temperature,
                         coarse_weight=args.refine_coarse_weight, mutual=args.refine_mutual)
        seconds = round(best_time(lambda: match(describer, source, target, points, refine=refine), 3), 3)  # noqa: B023
        rows.append({"what": "match 16 points, 256×256 pair, refined", **refine.settings(), "seconds": seconds,
                     "times_coarse": round(seconds / coarse, 2)})
        print(rows[-1])
        refinement = refine.refinement(*refine.maps([p.image for p in small]))
        refined = round(best_time(lambda: dense_flow(maps[0], small[0], maps[1], small[1],  # noqa: B023
                                                     refine=refinement), 1), 3)  # noqa: B023
        rows.append({"what": "dense flow 128×128 → 128×128, refined (fine maps made beforehand)", "fine": fine,
                     "seconds": refined, "coarse_seconds": flow, "times_coarse": round(refined / flow, 2)})
        print(rows[-1])
    return rows


if __name__ == "__main__":
    main()
