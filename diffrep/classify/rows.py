"""The rows a classification head fits on and is validated on: the train split's fit rows (a few
labels per class, or all), their distorted copies' rows behind them, and the validation rows (the
data set's val split, or a held-out eighth of train), read batch by batch from the feature store."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.holdout import holdout_split
from ..features import ShardedArray, as_tensor


def batches(maps: dict, cells: list, y: torch.Tensor, idx: torch.Tensor, size: int, gen=None):
    """(list of maps of `cells`, labels) in batches of `idx` (shuffled when `gen` is given)."""
    order = idx[torch.randperm(len(idx), generator=gen)] if gen is not None else idx
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        yield [as_tensor(maps[c][rows]).float() for c in cells], y[rows]


def with_copies(train: dict, copies: list[dict], fit: torch.Tensor, n: int) -> tuple[dict, torch.Tensor]:
    """The train maps with the distorted copies' rows behind them, and the fit rows among them: the
    fit images and their copies (the validation images' copies are left out, so validation stays
    unseen). Nothing is joined: each key reads its rows from the parts in place (memory-mapped
    shards stay on disk), batch by batch."""
    if not copies:
        return train, fit
    joined = {k: ShardedArray([part for maps in [train, *copies] for part in _parts(maps[k])]) for k in train}
    return joined, torch.cat([fit + c * n for c in range(len(copies) + 1)])


def _parts(array) -> list:
    return array.parts if isinstance(array, ShardedArray) else [array]


@dataclass
class Rows:
    """Rows `index` of maps (cell → N×C×h×w) with their `labels`: what one step of training reads."""
    maps: dict
    labels: torch.Tensor
    index: torch.Tensor

    def batches(self, cells: list, size: int, gen=None):
        return batches(self.maps, cells, self.labels, self.index, size, gen)


def fit_and_validation(cfg, feats: dict, labels: dict) -> tuple[torch.Tensor, Rows | None]:
    """The train rows that fit (original images' indices) and the validation rows: the data set's own
    val split where it has one, else a held-out eighth of train."""
    if "val" in labels:
        return torch.arange(len(labels["train"])), Rows(feats["val"], labels["val"], torch.arange(len(labels["val"])))
    fit, val = holdout_split(len(labels["train"]), seed=cfg.seed)
    return fit, Rows(feats["train"], labels["train"], val)


def labels_subset(labels: torch.Tensor, rows: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k rows of each class among `rows`, by a seeded permutation: the same images for every head
    and source (all of a class's rows where it has fewer)."""
    order = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))]
    picked = [order[labels[order] == c][:k] for c in labels[rows].unique()]
    return torch.cat(picked).sort().values


MIN_EPOCH_ROWS = 1000   # a few-label epoch repeats its images to this many rows, so 1 label per class still trains


def fit_rows(feats: dict, labels: dict, copies: list, fit: torch.Tensor, few: bool) -> Rows:
    """The rows a head fits on: `fit` and their distorted copies (`few`: repeated to MIN_EPOCH_ROWS)."""
    n = len(labels["train"])
    maps, index = with_copies(feats["train"], copies, fit, n)
    if few and len(index) < MIN_EPOCH_ROWS:
        index = index.repeat(-(-MIN_EPOCH_ROWS // len(index)))
    return Rows(maps, labels["train"].repeat(len(copies) + 1), index)
