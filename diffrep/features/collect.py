"""A feature source over a whole image set, in batches, optionally average-pooled, with progress."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .cell import Cell
from .sources import DiffusionFeatures


@torch.no_grad()
def collect_features(source: DiffusionFeatures, images: torch.Tensor, pools: list[int] | None = None,
                     batch_size: int = 250, desc: str = "features") -> dict[Cell, torch.Tensor]:
    """{Cell(t, block[, pool]): N×…} over all `images`. With `pools`, each map is average-pooled to p×p
    and flattened (N×C·p²); without, the N×C×h×w maps are kept. Batch b draws its noise from the
    source's seed + b."""
    parts: dict[Cell, list[torch.Tensor]] = {}
    n_batches = -(-len(images) // batch_size)
    for b in tqdm(range(n_batches), desc=desc, dynamic_ncols=True):
        feats = source.maps(images[b * batch_size:(b + 1) * batch_size], seed=source.seed + b)
        for cell, f in feats.items():
            if pools is None:
                parts.setdefault(cell, []).append(f)
            for p in pools or []:
                parts.setdefault(cell.pooled(p), []).append(F.adaptive_avg_pool2d(f, p).flatten(1))
    return {k: torch.cat(v) for k, v in parts.items()}
