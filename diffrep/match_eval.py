"""PCK evaluation of DIFT matching and its t × block sweep, with the baselines in the same run.

`run_match_eval` scores one (t, block) and both baselines on a benchmark, writes match-eval.json,
example match pictures and a PCA picture, and prints the table. `run_match_sweep` scores every
(t, block) cell (all blocks come from one forward pass per t), writes match-sweep.json and a heatmap
of PCK@0.1 per point, and prints the table.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .correspond import DiffusionDescriber, category_prompt, load_featurizer, prepare
from .errors import DiffrepError
from .jsonio import write_json
from .match_bench import (ALPHAS, DaisyDescriber, Pair, PixelDescriber, correct_matches, pair_hits, predict, score,
                          spair_pairs, warp_pairs)
from .match_pictures import draw_matches, draw_pca, pca_rgb
from .plotting import grid_rows, plot_grid

HEADLINE = "0.1"  # the α of the heatmap and the "best" cell


@dataclass
class MatchEvalConfig:
    model: str = "photos-ddpm"
    benchmark: str = "warps"         # 'warps' or 'spair'
    spair: str | None = None         # SPair-71k root folder (benchmark 'spair')
    split: str = "test"              # SPair split folder: trn, val or test
    pairs: int | None = None         # warps: how many pairs (default 120); SPair: at most this many
    size: int | None = None          # warps: image side (default 128); SPair: resize both images to size×size
    block: str | None = None         # default: correspond.default_block (mid_block; SD-sized: up_blocks.1)
    t: float | None = None           # noise level (timestep; σ for EDM); default the lightest, best on validation warps
    ensemble: int = 4                # noise draws averaged
    scales: list | None = None       # image scales joined; default correspond.default_scales
    seed: int = 0
    bf16: bool = False               # bfloat16 autocast for the features
    prompt: str | None = None        # None: "a photo of a {category}" when known, else ""
    mutual: bool = False             # non-mutual matches count as misses
    baselines: bool = True           # raw-pixel patches and DAISY in the same run
    examples: int = 4                # match pictures written for the first pairs
    ts: list = field(default_factory=lambda: [0, 10, 50, 100, 200])  # sweep only
    blocks: list | None = None       # sweep only; default: every top-level block but the output layer


WARPS_PAIRS, WARPS_SIZE = 120, 128


def load_pairs(cfg: MatchEvalConfig) -> tuple[list[Pair], int | None, str]:
    """The benchmark's pairs, the size to resize images to when matching (None: as they are), and the
    PCK threshold rule in words."""
    if cfg.benchmark == "warps" and cfg.spair is None:
        pairs = warp_pairs(cfg.pairs or WARPS_PAIRS, cfg.size or WARPS_SIZE, cfg.seed)
        return pairs, None, "α·max(image height, width) (the warps images have no boxes)"
    if cfg.benchmark == "spair" or cfg.spair:
        if not cfg.spair:
            raise DiffrepError("the spair benchmark needs the SPair-71k folder: --spair /path/to/SPair-71k")
        rule = "α·max(height, width) of the target bounding box"
        return spair_pairs(cfg.spair, cfg.split, cfg.pairs), cfg.size, rule
    raise DiffrepError(f"unknown benchmark {cfg.benchmark!r}; use 'warps' or --spair FOLDER")


def _baselines() -> dict:
    return {"pixels": PixelDescriber(), "daisy": DaisyDescriber()}


def _score_baselines(pairs, size, mutual) -> dict:
    out = {}
    for name, describer in _baselines().items():
        matches = predict(describer, pairs, size, mutual=mutual, desc=f"baseline {name}")[describer.blocks[0]]
        out[name] = {**score(pairs, matches), "descriptor": describer.blocks[0]}
    return out


def run_match_eval(cfg: MatchEvalConfig, out: str | Path) -> dict:
    start = time.time()
    out = Path(out)
    pairs, size, rule = load_pairs(cfg)
    describer = DiffusionDescriber(load_featurizer(cfg.model), cfg.block, cfg.t, cfg.ensemble, cfg.seed, cfg.bf16,
                                   scales=cfg.scales)
    print(f"{len(pairs)} pairs, {sum(len(p.source_points) for p in pairs)} keypoints; {cfg.model} "
          f"{describer.blocks[0]} t={describer.t} ensemble {cfg.ensemble} scales {list(describer.scales)}")
    matches = predict(describer, pairs, size, cfg.prompt, cfg.mutual, desc="diffusion features")[describer.blocks[0]]
    per_pair = {p.name: round(100 * pair_hits(p, m, 0.1).float().mean().item(), 1) for p, m in zip(pairs, matches)}
    methods = {"diffusion": {**score(pairs, matches), "block": describer.blocks[0], "t": describer.t,
                             "scales": list(describer.scales), "pck@0.1_per_pair": per_pair}}
    if cfg.baselines:
        methods.update(_score_baselines(pairs, size, cfg.mutual))
    result = {**_header(cfg, pairs, rule), "block": describer.blocks[0], "t": describer.t,
              "scales": list(describer.scales), "methods": methods,
              "seconds": round(time.time() - start, 1)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "match-eval.json", result)
    _examples(describer, pairs[:cfg.examples], matches, size, cfg.prompt, out)
    print(format_eval_table(result))
    print(f"wrote {out / 'match-eval.json'} and example pictures in {out} ({result['seconds']:.0f} s)")
    return result


def _header(cfg: MatchEvalConfig, pairs: list[Pair], rule: str) -> dict:
    return {"model": cfg.model, "benchmark": "spair" if cfg.spair else "warps",
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("ts", "blocks")},
            "n_pairs": len(pairs), "n_points": sum(len(p.source_points) for p in pairs),
            "alphas": list(ALPHAS), "threshold": rule,
            "pck": "per_point: all keypoints pooled; per_image: mean over pairs of each pair's fraction (%)"}


def _examples(describer, pairs: list[Pair], matches, size, prompt, out: Path) -> None:
    """Match pictures of the first pairs (green within 0.1·threshold size, red beyond) and the PCA
    picture of the first pair's features."""
    for pair, m in zip(pairs, matches):
        src, tgt = pair.images()
        ok = correct_matches(m.points, pair.target_points, pair.threshold_size, 0.1)
        draw_matches(src, tgt, pair.source_points, m.points, out / f"example-{pair.name}.png", ok,
                     f"{pair.name}: {describer.blocks[0]} t={describer.t}")
    if pairs:
        images = pairs[0].images()
        prepared = [prepare(im, describer.stride, size or describer.fixed_size) for im in images]
        text = prompt if prompt is not None else category_prompt(pairs[0].category)
        maps = [d[describer.blocks[0]] for d in describer.describe([p.image for p in prepared], text)]
        shown = [p.image[:, :p.hw[0], :p.hw[1]] for p in prepared]
        draw_pca(shown, pca_rgb(maps, prepared), out / f"features-{pairs[0].name}.png")


def format_eval_table(result: dict) -> str:
    alphas = [str(a) for a in result["alphas"]]
    labels = {name: f"{name} ({r['block']}, t={r['t']})" if name == "diffusion" else f"{name} ({r['descriptor']})"
              for name, r in result["methods"].items()}
    width = max(34, *(len(v) + 2 for v in labels.values()))
    lines = [f"PCK (%) on {result['benchmark']} ({result['n_pairs']} pairs, {result['n_points']} points); "
             f"threshold {result['threshold']}",
             "method".ljust(width) + "".join(f"@{a} pt".rjust(10) + f"@{a} img".rjust(11) for a in alphas)]
    for name, r in result["methods"].items():
        cells = (f"{r[a]['per_point']:.1f}".rjust(10) + f"{r[a]['per_image']:.1f}".rjust(11) for a in alphas)
        lines.append(labels[name].ljust(width) + "".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- sweep

def run_match_sweep(cfg: MatchEvalConfig, out: str | Path) -> dict:
    start = time.time()
    out = Path(out)
    pairs, size, rule = load_pairs(cfg)
    featurizer = load_featurizer(cfg.model)
    blocks = featurizer.check_blocks(cfg.blocks or featurizer.default_blocks())
    ts = [featurizer.backbone.noise.check(t) for t in cfg.ts]
    cells = []
    for t in ts:
        describer = DiffusionDescriber(featurizer, blocks, t, cfg.ensemble, cfg.seed, cfg.bf16, scales=cfg.scales)
        matches = predict(describer, pairs, size, cfg.prompt, cfg.mutual, desc=f"t={t}, {len(blocks)} blocks")
        cells += [{"t": t, "block": b, **score(pairs, matches[b])} for b in blocks]
        row = zip(blocks, cells[-len(blocks):])
        print(f"t={t}: " + ", ".join(f"{b} {c[HEADLINE]['per_point']:.1f}" for b, c in row))
    result = {**_header(cfg, pairs, rule), "ts": ts, "blocks": blocks, "cells": cells,
              "best": max(cells, key=lambda c: c[HEADLINE]["per_point"]),
              "heatmap": f"PCK@{HEADLINE} per point (%)"}
    if cfg.baselines:
        result["baselines"] = _score_baselines(pairs, size, cfg.mutual)
    result["seconds"] = round(time.time() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "match-sweep.json", result)
    plot_sweep(result, out / "heatmap.png")
    print(format_sweep_table(result))
    print(f"wrote {out / 'match-sweep.json'} and {out / 'heatmap.png'} ({result['seconds']:.0f} s)")
    return result


def sweep_grid(result: dict) -> torch.Tensor:
    """t × block PCK@0.1 per point."""
    value = {(c["t"], c["block"]): c[HEADLINE]["per_point"] for c in result["cells"]}
    return torch.tensor([[value[t, b] for b in result["blocks"]] for t in result["ts"]])


def _baseline_line(result: dict) -> str:
    bl = result.get("baselines")
    if not bl:
        return ""
    return "baselines: " + ", ".join(f"{n} ({r['descriptor']}) {r[HEADLINE]['per_point']:.1f}" for n, r in bl.items())


def format_sweep_table(result: dict) -> str:
    lines = [f"PCK@{HEADLINE} per point (%) on {result['benchmark']} ({result['n_pairs']} pairs), t × block",
             *grid_rows(sweep_grid(result), result["ts"], result["blocks"], min_width=9)]
    best = result["best"]
    lines.append(f"best: t={best['t']} {best['block']}: PCK@{HEADLINE} {best[HEADLINE]['per_point']:.1f} per point, "
                 f"{best[HEADLINE]['per_image']:.1f} per image")
    return "\n".join(filter(None, [*lines, _baseline_line(result)]))


def plot_sweep(result: dict, path: Path) -> None:
    grid = sweep_grid(result)
    best = result["best"]
    star = (result["ts"].index(best["t"]), result["blocks"].index(best["block"]))
    title = f"PCK@{HEADLINE} per point (%), {result['model']} on {result['benchmark']} ({result['n_pairs']} pairs)"
    plot_grid(grid, result["ts"], result["blocks"], star, "\n".join(filter(None, [title, _baseline_line(result)])),
              "PCK (%)", path)
