"""The t × block sweep of DIFT matching (`diffrep match-sweep`), with its join rows and the baselines.

`run_match_sweep` scores every (t, block) cell (all blocks come from one forward pass per t), writes
match-sweep.json and a heatmap of PCK@0.1 per point, and prints the table. Every cell has PCK at each
α of `metrics.ALPHAS` and the median end-point error; α = 0.1 is the headline (heatmap, best cell).

Hyper-features (`--joins`): rows that join several (block, t) cells into one descriptor, each part
L2-normalised, equal weight (`describe.py`). By default one row, 'best': the sweep's two best blocks
at its two best levels (blocks, and levels, ranked by their best cell), 2 × 2 parts: what a
researcher would try first after reading the heatmap, with no weights to fit. Joins written out
(`mid_block@50+up_blocks.0@0`) name every block's levels, as the sweep has no one t to read them at.
The rows sit under the heatmap on its colour scale and in the table; `chosen` is the best of cells
and joins. The sweep is the selection tool: run it on validation pairs (warps and geo `--seed 1`,
SPair `--split val`), then score its choice once on test pairs with `match-eval` (`--seed 0`,
`--split test`), so that the choice never sees the pairs it is scored on.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ...errors import DiffrepError
from ...metrics import ALPHAS, score_matches
from ...plotting import grid_rows, plot_grid
from ...runs import locked, write_results
from .describe import DiffusionDescriber, load_featurizer
from .evaluate import BEST, HEADLINE, MatchEvalConfig, predict, run_header, score_baselines
from .reference import reference

SWEEP_TS = [0, 10, 50, 100, 200]


def run_match_sweep(cfg: MatchEvalConfig, out: str | Path) -> dict:
    """`diffrep match-sweep`: score coarse matching at every t × block cell (and the join of the best
    ones), and write `match-sweep.json` and the heatmap into the run folder `out`. Returns the results."""
    if cfg.refine is not None:
        raise DiffrepError("match-sweep scores coarse matches only: choose t and block with it, then score the "
                           "refinement with match-eval --refine")
    with locked(out) as out:
        start = time.time()
        pairs, size, rule = cfg.load_pairs()
        featurizer = load_featurizer(cfg.model, cfg.device, cfg.precision, **cfg.model_options())
        ts, blocks = sweep_axes(cfg, featurizer)
        specs = cfg.join_specs()
        given = [j for j in specs if j != BEST]
        if given:   # block names and levels checked before the grid runs
            _join_describer(cfg, featurizer, given)
        cells = []
        for t in ts:
            describer = DiffusionDescriber(featurizer, blocks, t, cfg.ensemble, cfg.seed, cfg.precision,
                                           scales=cfg.scales, reference=cfg.reference)
            matches = predict(describer, pairs, size, cfg.prompt, cfg.mutual, desc=f"t={t}, {len(blocks)} blocks")
            cells += [{"t": t, "block": b, **score_matches(pairs, matches[b])} for b in blocks]
            row = zip(blocks, cells[-len(blocks):])
            print(f"t={t}: PCK@{HEADLINE} (median EPE px) " + ", ".join(
                f"{b} {c[HEADLINE]['per_point']:.1f} ({c['median_epe']['per_point']:.2f})" for b, c in row))
        joins = sweep_joins(cfg, featurizer, pairs, size, specs, cells, blocks)
        baselines = score_baselines(pairs, size, cfg.mutual) if cfg.baselines else None
        fixed = {k: v for k, v in describer.settings().items() if k != "t"}   # the same in every row
        best = max(cells, key=_headline)
        result = {**run_header(cfg, pairs, rule, start), **fixed, "ts": ts, "blocks": blocks, "cells": cells,
                  "best": best, "joins": joins, "join_rule": JOIN_RULE, "chosen": _chosen(best, joins),
                  "heatmap": f"PCK@{HEADLINE} per point (%)", **({"baselines": baselines} if baselines else {})}
        write_results(out, "match-sweep", result, cfg)
        plot_sweep(result, out / "heatmap.png")
        print(format_sweep_table(result))
        print(f"wrote {out / 'match-sweep.json'} and {out / 'heatmap.png'} ({result['timing_s']['total']:.0f} s)")
        return result


JOIN_RULE = (f"each (block, t) part L2-normalised over channels, concatenated with equal weight; '{BEST}': the "
             f"sweep's two best blocks at its two best levels, each ranked by its best cell's PCK@{HEADLINE}")


def _headline(row: dict) -> float:
    return row[HEADLINE]["per_point"]


def best_join(cells: list[dict], blocks: list[str]) -> str | None:
    """The sweep's two best blocks (execution order) at its two best levels (ascending), each ranked by
    its best cell; None when the grid has a single cell."""
    def top(axis: str) -> list:
        ranked = dict.fromkeys(c[axis] for c in sorted(cells, key=_headline, reverse=True))   # stable on ties
        return list(ranked)[:2]
    chosen, levels = [b for b in blocks if b in top("block")], sorted(top("t"))
    if len(chosen) * len(levels) < 2:
        return None
    return "+".join(f"{b}@{','.join(map(str, levels))}" for b in chosen)


def _join_describer(cfg: MatchEvalConfig, featurizer, specs: list[str]) -> DiffusionDescriber:
    """One describer of all joins: one forward per level any of them reads, the grid's other settings."""
    return DiffusionDescriber(featurizer, specs, None, cfg.ensemble, cfg.seed, cfg.precision, scales=cfg.scales,
                              reference=cfg.reference)


def sweep_joins(cfg: MatchEvalConfig, featurizer, pairs, size, specs: list[str], cells: list[dict],
                blocks: list[str]) -> list[dict]:
    """The join rows: each join's descriptor (canonical name), its parts, whether it is the 'best' rule's,
    and its scores (every α's PCK and the median EPE)."""
    best = best_join(cells, blocks) if BEST in specs else None
    specs = [best if s == BEST else s for s in specs if s != BEST or best is not None]
    if not specs:
        return []
    describer = _join_describer(cfg, featurizer, specs)
    matches = predict(describer, pairs, size, cfg.prompt, cfg.mutual, desc=f"{len(describer.blocks)} join(s)")
    rows = [{"join": d, "parts": [{"t": c.t, "block": c.block} for c in describer.parts[d]], "best_rule": d == best,
             **score_matches(pairs, matches[d])} for d in describer.blocks]
    for r in rows:
        print(f"join {r['join']}: PCK@{HEADLINE} {_headline(r):.1f} ({r['median_epe']['per_point']:.2f})")
    return rows


def _chosen(best: dict, joins: list[dict]) -> dict:
    """The best of the grid's cells and the joins, with the match-eval flags that score it."""
    join = max(joins, key=_headline, default=None)
    if join is not None and _headline(join) > _headline(best):
        return {"block": join["join"], "t": None, HEADLINE: join[HEADLINE], "flags": f"--block {join['join']}"}
    return {"block": best["block"], "t": best["t"], HEADLINE: best[HEADLINE],
            "flags": f"--block {best['block']} --t {best['t']}"}


def sweep_axes(cfg: MatchEvalConfig, featurizer) -> tuple[list, list[str]]:
    """The sweep's noise levels and blocks: those given, else the defaults with the reference's t and
    block added, so that DIFT's own cell is in the grid."""
    ref = reference(cfg.reference)
    ts = cfg.ts or sorted(set(SWEEP_TS) | ({ref.t} if ref else set()))
    blocks = cfg.blocks or featurizer.default_blocks("probe") + ([ref.block] if ref else [])
    return [featurizer.backbone.noise.check(t) for t in ts], featurizer.check_blocks(blocks)


def sweep_grid(result: dict, key: str = HEADLINE) -> torch.Tensor:
    """t × block per-point values of one score: PCK@α (key α, default the headline) or "median_epe"."""
    value = {(c["t"], c["block"]): c[key]["per_point"] for c in result["cells"]}
    return torch.tensor([[value[t, b] for b in result["blocks"]] for t in result["ts"]])


def _scores(r: dict) -> str:
    """Every α's PCK and the median EPE of one cell or method, per point, on one line."""
    pck = " / ".join(f"{r[str(a)]['per_point']:.1f}" for a in ALPHAS)
    return f"PCK@{'/'.join(map(str, ALPHAS))} {pck}, median EPE {r['median_epe']['per_point']:.2f} px"


def _baseline_line(result: dict) -> str:
    bl = result.get("baselines")
    if not bl:
        return ""
    return "baselines: " + ", ".join(f"{n} ({r['descriptor']}) {r[HEADLINE]['per_point']:.1f} "
                                     f"(EPE {r['median_epe']['per_point']:.2f} px)" for n, r in bl.items())


def format_sweep_table(result: dict) -> str:
    """The headline PCK grid and the median EPE grid (t × block, per point), the best cell with all its
    scores, the join rows with all theirs, the choice, and the baselines."""
    ts, blocks = result["ts"], result["blocks"]
    lines = [f"PCK@{HEADLINE} per point (%) on {result['benchmark']} ({result['n_pairs']} pairs), t × block",
             *grid_rows(sweep_grid(result), ts, blocks, min_width=9),
             "median EPE per point (pixels), t × block",
             *grid_rows(sweep_grid(result, "median_epe"), ts, blocks, min_width=9)]
    best = result["best"]
    lines.append(f"best: t={best['t']} {best['block']}: PCK@{HEADLINE} {best[HEADLINE]['per_point']:.1f} per point, "
                 f"{best[HEADLINE]['per_image']:.1f} per image")
    lines.append(f"  per point: {_scores(best)}; median EPE per image {best['median_epe']['per_image']:.2f} px")
    joins = result.get("joins") or []
    if joins:
        lines.append("joins (hyper-features: each (block, t) part L2-normalised, equal weight), per point:")
        lines += [f"  {r['join']}{f' ({BEST})' if r['best_rule'] else ''}: {_scores(r)}" for r in joins]
    if "chosen" in result:
        chosen = result["chosen"]
        lines.append(f"chosen: {chosen['flags']} (PCK@{HEADLINE} {chosen[HEADLINE]['per_point']:.1f}); choose on "
                     "validation pairs (--seed 1, SPair --split val), score once on test with match-eval")
    return "\n".join(filter(None, [*lines, _baseline_line(result)]))


def plot_sweep(result: dict, path: Path) -> None:
    grid = sweep_grid(result)
    best = result["best"]
    star = (result["ts"].index(best["t"]), result["blocks"].index(best["block"]))
    title = f"PCK@{HEADLINE} per point (%), {result['model']} on {result['benchmark']} ({result['n_pairs']} pairs)"
    joins = [(r["join"], _headline(r)) for r in result.get("joins") or []]
    plot_grid(grid, result["ts"], result["blocks"], star, "\n".join(filter(None, [title, _baseline_line(result)])),
              "PCK (%)", path, extra=joins)
