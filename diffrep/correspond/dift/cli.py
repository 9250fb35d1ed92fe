"""`diffrep match`, `match-eval`, `match-sweep` (DIFT); flags from the configs in evaluate.py, the sweep in sweep.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...data import read_image
from ...errors import DiffrepError
from ...options import add_options, from_args, option
from ...runs import output_file, write_json
from .describe import category_prompt, load_featurizer
from .evaluate import DescriptorConfig, MatchEvalConfig, run_match_eval, settings_line
from .sweep import run_match_sweep
from .frames import check_points
from .matching import dense_flow, describe_pair, match_maps
from .pictures import draw_matches, draw_pca, pca_rgb


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


@dataclass
class MatchConfig(DescriptorConfig):
    points: str | None = option(None, 'source points "x,y;x,y" in pixels (default: a 4×4 grid)', parse=str)
    category: str | None = option(None, "object category, for the prompt 'a photo of a {category}'", parse=str)
    flow: bool = option(False, "also write the dense flow (every source pixel) as <out>-flow.npz (refined "
                               "too with --refine)")


def run_match(cfg: MatchConfig, source_path: str, target_path: str, out: str) -> dict:
    """Match points of one image in another: <out>.png (lines), <out>-features.png (PCA colours of
    both images' features), <out>.json (every match) and, with `flow`, <out>-flow.npz."""
    out = output_file(out, "--out", ".png")
    names = {"json": out.with_suffix(".json"), "features": out.with_name(out.stem + "-features.png"),
             "flow": out.with_name(out.stem + "-flow.npz")}
    source, target = (read_image(Path(p), 3, None)[0] for p in (source_path, target_path))
    points = parse_points(cfg.points) if cfg.points is not None else grid_points(tuple(source.shape[-2:]))
    describer = cfg.describer(load_featurizer(cfg.model, cfg.device, cfg.precision, **cfg.model_options()))
    refine = cfg.refiner(describer)
    prompt = cfg.prompt if cfg.prompt is not None else category_prompt(cfg.category)
    points = check_points(points, tuple(source.shape[-2:]), "source points")
    (src, tgt), (fs, ft), refinement = describe_pair(describer, source, target, cfg.image_size, prompt, refine)
    found = match_maps(fs, src, ft, tgt, points, cfg.mutual, refine=refinement)
    record = {"source": source_path, "target": target_path, "model": cfg.model, "block": describer.blocks[0],
              **describer.settings(), "refine": refine.settings() if refine else None, "precision": cfg.precision,
              "device": cfg.device, "prompt": prompt, "size": cfg.image_size,
              "coordinates": "x, y in pixels of each input image (pixel centres at integers); with refine, "
                             "'target' is refined and 'coarse' the match before refinement",
              "matches": found.to_json(points)}
    if cfg.flow:   # computed before any file is written: a failure leaves nothing half-written
        flow, sim = dense_flow(fs, src, ft, tgt, refine=refinement)
        target_xy = tgt.to_input(flow.view(-1, 2)).view(flow.shape)
    title = f"{describer.blocks[0]} {settings_line(describer, refine)}"
    draw_matches(source, target, points, found.points, out, title=title)
    draw_pca([p.image[:, :p.hw[0], :p.hw[1]] for p in (src, tgt)], pca_rgb([fs, ft], [src, tgt]), names["features"])
    if cfg.flow:
        np.savez_compressed(names["flow"], target_xy=target_xy.numpy(), similarity=sim.numpy())
        record["flow"] = str(names["flow"])
    write_json(names["json"], record)
    for row in record["matches"]:
        print(f"({row['source'][0]:g}, {row['source'][1]:g}) -> ({row['target'][0]:g}, {row['target'][1]:g})  "
              f"similarity {row['similarity']:.3f}" + ("" if "mutual" not in row else f"  mutual {row['mutual']}"))
    print(f"wrote {out}, {names['features']}, {names['json']}" + (f" and {names['flow']}" if cfg.flow else ""))
    return record


def register(commands) -> None:
    p = commands.add("match", lambda a: run_match(from_args(MatchConfig, a), a.source, a.target, a.out),
                     help="match points of one image in another (DIFT); writes pictures and JSON")
    p.add_argument("source")
    p.add_argument("target")
    add_options(p, MatchConfig)
    p.add_argument("--out", default="match.png", help="picture (.png); the JSON, features picture and flow go beside it")

    refine = ("refine", "refine_t", "refine_radius", "refine_temperature", "refine_coarse_weight",
              "refine_min_similarity", "refine_mutual")   # match-sweep scores coarse matches
    sweep_only, eval_only = ("ts", "blocks", "joins"), ("block", "t", "examples", *refine)
    p = commands.add("match-eval", lambda a: run_match_eval(from_args(MatchEvalConfig, a), a.out),
                     help="PCK of DIFT matching on warps, geo or SPair-71k, with baselines")
    add_options(p, MatchEvalConfig, skip=sweep_only)
    p.add_argument("--out", default="runs/corr", help="run folder (default runs/corr)")

    p = commands.add("match-sweep", lambda a: run_match_sweep(from_args(MatchEvalConfig, a), a.out),
                     help="PCK and median EPE for every (t, block) and for joins of several (--joins): table, "
                          "JSON, heatmap of PCK@0.1")
    add_options(p, MatchEvalConfig, skip=eval_only)
    p.add_argument("--out", default="runs/corr-sweep", help="run folder (default runs/corr-sweep)")
