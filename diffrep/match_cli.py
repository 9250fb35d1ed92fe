"""Command-line commands: match, match-eval, match-sweep (DIFT)."""

from __future__ import annotations

from pathlib import Path

import torch

from .cli_args import csv_of, noise_level
from .errors import DiffrepError
from .jsonio import write_json

DEFAULT_MODEL = "photos-ddpm"


def parse_points(text: str) -> torch.Tensor:
    """ "x,y;x,y;…" (pixels, x = column) → K×2 tensor."""
    points = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        values = part.split(",")
        try:
            if len(values) != 2:
                raise ValueError
            points.append([float(v) for v in values])
        except ValueError:
            raise DiffrepError(f"malformed point {part!r} in --points {text!r}: write x,y pairs separated by ';', "
                               "e.g. \"12,40;55,31\"") from None
    if not points:
        raise DiffrepError(f"--points {text!r} holds no points; write e.g. \"12,40;55,31\"")
    return torch.tensor(points)


def grid_points(hw: tuple[int, int], n: int = 4) -> torch.Tensor:
    """An n×n grid of points inside an h×w image (the default when no --points are given)."""
    h, w = hw
    fractions = (torch.arange(n) + 0.5) / n
    ys, xs = torch.meshgrid(fractions * (h - 1), fractions * (w - 1), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1).round()


def _add_model_options(p, sweep: bool = False) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled name, local diffusers folder or hub id")
    if not sweep:
        p.add_argument("--block", default=None, help="block to match with; 'a+b' concatenates blocks (default: "
                                                     "up_blocks.1 in SD-sized latent UNets as DIFT, else mid_block)")
        p.add_argument("--t", type=noise_level, default=None, help="noise level: timestep (σ for EDM); default the "
                       "lightest (0; σ_min for EDM), best on validation warps with photos-ddpm (DIFT on SD: 261)")
    p.add_argument("--ensemble", type=int, default=4, help="noise draws averaged (DIFT: 8)")
    p.add_argument("--scales", type=csv_of(float), default=None,
                   help="image scales whose features are joined (default: 1,0.5,0.25,0.125 for pixel UNets, "
                        "1 for latent UNets and DiT)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the features (≈1.4× faster on CPU)")
    p.add_argument("--prompt", default=None, help="text condition for conditional models (default: 'a photo of a "
                                                  "{category}' when the category is known, else empty)")
    p.add_argument("--mutual", action="store_true", help="keep only mutual nearest neighbours (others count as misses)")
    p.add_argument("--size", type=int, default=None, help="match: resize both images to SIZE×SIZE first; warps: "
                                                          "image side (default 128); SPair: resize to SIZE×SIZE")


def _add_benchmark_options(p, out: str) -> None:
    p.add_argument("--benchmark", choices=["warps", "spair"], default="warps")
    p.add_argument("--spair", default=None,
                   help="SPair-71k folder (PairAnnotation/, JPEGImages/); implies --benchmark spair")
    p.add_argument("--split", default="test", help="SPair split folder: trn, val or test")
    p.add_argument("--pairs", type=int, default=None,
                   help="warps: number of pairs (default 120); SPair: at most this many")
    p.add_argument("--no-baselines", action="store_true", help="skip the raw-pixel and DAISY baselines")
    p.add_argument("--out", default=out)


def add_commands(sub) -> dict:
    """Add this method's sub-commands to the `diffrep` parser; return {command name: function(args)}."""
    p = sub.add_parser("match", help="match points of one image in another (DIFT); writes a picture and JSON")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--points", default=None, help='source points "x,y;x,y" in pixels (default: a 4×4 grid)')
    p.add_argument("--category", default=None, help="object category, for the prompt 'a photo of a {category}'")
    p.add_argument("--flow", action="store_true", help="also write the dense flow (every source pixel) as .npz")
    _add_model_options(p)
    p.add_argument("--out", default="match.png", help="picture; the JSON (and flow) go beside it")

    p = sub.add_parser("match-eval", help="PCK of DIFT matching on warps or SPair-71k, with baselines")
    _add_model_options(p)
    _add_benchmark_options(p, "runs/corr")
    p.add_argument("--examples", type=int, default=4, help="match pictures written for the first pairs")

    p = sub.add_parser("match-sweep", help="PCK@0.1 for every (t, block): table, JSON, heatmap")
    _add_model_options(p, sweep=True)
    _add_benchmark_options(p, "runs/corr-sweep")
    p.add_argument("--t", type=csv_of(noise_level), default=[0, 10, 50, 100, 200],
                   help="noise levels (default 0,10,50,100,200)")
    p.add_argument("--blocks", type=csv_of(str), default=None, help="default: every top-level block")
    return {"match": cmd_match, "match-eval": cmd_match_eval, "match-sweep": cmd_match_sweep}


def cmd_match(args) -> None:
    from .correspond import DiffusionDescriber, category_prompt, load_featurizer, match
    from .data import read_image
    from .match_pictures import draw_matches, draw_pca, pca_rgb

    source, target = (read_image(Path(p), 3, None)[0] for p in (args.source, args.target))
    points = parse_points(args.points) if args.points is not None else grid_points(tuple(source.shape[-2:]))
    describer = DiffusionDescriber(load_featurizer(args.model), args.block, args.t, args.ensemble, args.seed, args.bf16,
                                   scales=args.scales)
    prompt = args.prompt if args.prompt is not None else category_prompt(args.category)
    found, (src, tgt), (fs, ft) = match(describer, source, target, points, args.size, prompt, args.mutual)

    out = Path(args.out)
    title = f"{describer.blocks[0]} t={describer.t} ensemble {args.ensemble} scales {list(describer.scales)}"
    draw_matches(source, target, points, found.points, out, title=title)
    draw_pca([p.image[:, :p.hw[0], :p.hw[1]] for p in (src, tgt)], pca_rgb([fs, ft], [src, tgt]),
             out.with_name(out.stem + "-features.png"))
    record = {"source": args.source, "target": args.target, "model": args.model, "block": describer.blocks[0],
              "t": describer.t, "ensemble": args.ensemble, "scales": list(describer.scales), "seed": args.seed,
              "bf16": args.bf16, "prompt": prompt,
              "size": args.size,
              "coordinates": "x, y in pixels of each input image (pixel centres at integers)",
              "matches": found.to_json(points)}
    if args.flow:
        record["flow"] = str(_write_flow(fs, src, ft, tgt, out.with_name(out.stem + "-flow.npz")))
    write_json(out.with_suffix(".json"), record)
    for row in record["matches"]:
        print(f"({row['source'][0]:g}, {row['source'][1]:g}) -> ({row['target'][0]:g}, {row['target'][1]:g})  "
              f"similarity {row['similarity']:.3f}" + ("" if "mutual" not in row else f"  mutual {row['mutual']}"))
    print(f"wrote {out}, {out.with_suffix('.json')} and {out.with_name(out.stem + '-features.png')}")


def _write_flow(fs, src, ft, tgt, path: Path) -> Path:
    """Dense flow: for every pixel of the (resized) source, its nearest target pixel in target input pixels."""
    import numpy as np

    from .correspond import dense_flow

    flow, sim = dense_flow(fs, src, ft, tgt)
    target_xy = tgt.to_input(flow.view(-1, 2)).view(flow.shape)
    np.savez_compressed(path, target_xy=target_xy.numpy(), similarity=sim.numpy())
    return path


def _config(args, **extra):
    from .match_eval import MatchEvalConfig

    return MatchEvalConfig(model=args.model, benchmark=args.benchmark, spair=args.spair, split=args.split,
                           pairs=args.pairs, size=args.size, ensemble=args.ensemble, scales=args.scales, seed=args.seed,
                           bf16=args.bf16,
                           prompt=args.prompt, mutual=args.mutual, baselines=not args.no_baselines, **extra)


def cmd_match_eval(args) -> None:
    from .match_eval import run_match_eval

    run_match_eval(_config(args, block=args.block, t=args.t, examples=args.examples), args.out)


def cmd_match_sweep(args) -> None:
    from .match_eval import run_match_sweep

    run_match_sweep(_config(args, ts=args.t, blocks=args.blocks), args.out)
