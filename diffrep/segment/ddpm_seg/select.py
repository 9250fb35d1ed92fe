"""`--select`: choose DDPM-Seg's blocks and noise levels on the labelled images alone.

Every candidate (block, t) cell is scored by k-fold cross-validation over whole labelled images: a
single MLP trained (3 epochs, batch ≥ 256) on the cell's pixel features of the other folds, scored
by mIoU on uniformly drawn pixels of the held-out fold. All candidates share one feature cache and one drawn pool per
fold (a cell is a slice of its channels). Kept: the `select_blocks` blocks with the best cells, and
the `select_ts` levels with the best mean score over those blocks. Test data is never touched.
"""

from __future__ import annotations

import torch
from accelerate.utils import broadcast_object_list

from ...core import Featurizer
from ...data import ImageSet
from ...errors import DiffrepError
from ...features import Cell, DiffusionFeatures, ImageCache, total_channels
from ...heads import PixelMLPs, majority_vote, train_heads
from ...metrics import SegMetrics
from .config import SegConfig, default_levels
from .pools import PixelPools

SELECT_EPOCHS = 3
SELECT_BATCH = 256   # larger batches than training's: the sweep only ranks cells, and runs one MLP per cell
SELECT_TS = (25, 50, 150, 250, 500)


def candidates(featurizer: Featurizer, cfg: SegConfig) -> tuple[list[str], list]:
    """The cells to try: the blocks and ts given, else the mid block and every up block (the last one
    too) at t ∈ {25, 50, 150, 250, 500} (σ equivalents of DDPM-Seg's levels for EDM models)."""
    blocks = cfg.blocks or featurizer.default_blocks("segment-candidates")
    noise = featurizer.backbone.noise
    ts = cfg.ts or ([t for t in SELECT_TS if t < noise.num_steps] if noise.kind == "vp" else default_levels(noise))
    return featurizer.check_blocks(blocks), [noise.check(t) for t in ts]


def _columns(source: DiffusionFeatures) -> dict[Cell, slice]:
    """Where each (t, block) map's channels sit in the concatenated pixel feature."""
    out, start = {}, 0
    for key, c in source.channels.items():
        out[key] = slice(start, start + c)
        start += c
    return out


def _score_cell(x, y, x_test, y_test, cols: slice, n_classes: int, cfg: SegConfig) -> float:
    heads = PixelMLPs(cols.stop - cols.start, n_classes, k=1, seed=cfg.seed)
    pool = (x[:, cols].contiguous(), y)
    train_heads(heads, lambda _epoch: pool, (x[:0, cols], y[:0]), cfg.lr, max(cfg.batch_size, SELECT_BATCH),
                SELECT_EPOCHS, SELECT_EPOCHS, cfg.seed, desc=None)
    metrics = SegMetrics([str(c) for c in range(n_classes)], None)
    with torch.no_grad():
        metrics.update(majority_vote(heads(x_test[:, cols])), y_test)
    return metrics.compute()["miou"]


def select_cells(cfg: SegConfig, featurizer: Featurizer, data: ImageSet, cache_root, state=None) -> tuple[list[str], list, dict]:
    """The best (blocks, ts) by cross-validation over the labelled images. Under several processes
    each extracts its share of the candidates' maps; the main process scores the cells and hands the
    choice to the others."""
    if len(data) < 2:
        raise DiffrepError("--select cross-validates over labelled images: it needs at least 2")
    blocks, ts = candidates(featurizer, cfg)
    source = DiffusionFeatures(featurizer, blocks, ts, cfg.ensemble, cfg.seed, cfg.shared_noise, cfg.precision,
                               noise_per_t=cfg.noise_per_t)
    print(f"--select: {len(blocks)} blocks × {len(ts)} t, cross-validated on {len(data)} labelled images")
    cache = ImageCache(cache_root / "select", source, data.images, cfg.extract_batch, "candidate features", state)
    if state is not None and state.num_processes > 1:
        chosen = [_choose(cfg, featurizer, cache, source, data, blocks, ts) if state.is_main_process else None]
        return tuple(broadcast_object_list(chosen)[0])
    return _choose(cfg, featurizer, cache, source, data, blocks, ts)


def _choose(cfg: SegConfig, featurizer: Featurizer, cache: ImageCache, source, data: ImageSet, blocks, ts):
    keys, columns, n_classes = list(source.channels), _columns(source), len(data.classes)
    folds = min(3, len(data))
    scores = {key: [] for key in keys}
    for f in range(folds):
        held = [i for i in range(len(data)) if i % folds == f]
        rest = [i for i in range(len(data)) if i % folds != f]
        x, y = PixelPools(cache, keys, data, rest, cfg, total_channels(source)).train(0)
        x_test, y_test = PixelPools(cache, keys, data, held, cfg, total_channels(source)).everything(cfg.pixels_per_image)
        for key in keys:
            scores[key].append(_score_cell(x, y, x_test, y_test, columns[key], n_classes, cfg))
        print(f"  fold {f + 1}/{folds} done")
    mean = {key: sum(v) / len(v) for key, v in scores.items()}
    cell = {(t, b): mean[Cell(t, b)] for t in ts for b in blocks}
    best_blocks = sorted(blocks, key=lambda b: -max(cell[t, b] for t in ts))[:cfg.select_blocks]
    best_ts = sorted(ts, key=lambda t: -sum(cell[t, b] for b in best_blocks))[:cfg.select_ts]
    chosen_blocks, chosen_ts = featurizer.check_blocks(best_blocks), sorted(best_ts)
    print(f"--select chose blocks {chosen_blocks}, t {chosen_ts}")
    selection = {"folds": folds, "epochs": SELECT_EPOCHS, "chosen": {"blocks": chosen_blocks, "ts": chosen_ts},
                 "cells": [{"t": t, "block": b, "cv_miou": round(cell[t, b], 4)} for t in ts for b in blocks]}
    return chosen_blocks, chosen_ts, selection
