"""A grid of linear probes trained together in one pass over cached features (after dinov2's
`AllClassifiers`). Every cell (e.g. a t × block × pool combination) gets heads at several L2
strengths; features are standardised with the fit split's statistics; the strength of each cell, and
the best cell, are chosen on a held-out part of the fit split, never on the test split."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data.holdout import holdout_split

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2)


CHUNK = 4096   # rows read at a time when computing statistics


class Standardised:
    """A cell's features (a tensor, or a memory-mapped `ShardedArray` of N×… rows), flattened and
    standardised with the mean and std of the rows `fit` (computed in chunks, in float64): `x[idx]`
    gives those rows standardised. A tensor is standardised once, up front; a memory-mapped array
    row by row as batches are read, so it never has to fit in memory. Both give the same numbers."""

    def __init__(self, x, fit: torch.Tensor):
        total = total_sq = 0
        for start in range(0, len(fit), CHUNK):
            rows = x[fit[start:start + CHUNK]].flatten(1).double()
            total, total_sq = total + rows.sum(0), total_sq + (rows * rows).sum(0)
        n = len(fit)
        mean = total / n
        var = ((total_sq - n * mean * mean) / max(n - 1, 1)).clamp_min(0)
        self.mean, self.std = mean.float(), var.sqrt().float().clamp_min(1e-6)
        self.source = x
        self.whole = self._apply(x.flatten(1)) if torch.is_tensor(x) else None
        self.dim = self.mean.numel()

    def _apply(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows.float() - self.mean) / self.std

    def __getitem__(self, idx) -> torch.Tensor:
        return self.whole[idx] if self.whole is not None else self._apply(self.source[idx].flatten(1))

    def of(self, x) -> "Standardised":
        """Other rows (the test split's) standardised with these statistics."""
        other = object.__new__(Standardised)
        other.mean, other.std, other.source, other.dim = self.mean, self.std, x, self.dim
        other.whole = self._apply(x.flatten(1)) if torch.is_tensor(x) else None
        return other


def train_probe_grid(train: dict, train_y: torch.Tensor, test: dict,
                     test_y: torch.Tensor, epochs: int = 60, batch_size: int = 256, lr: float = 1e-3,
                     seed: int = 0, progress=None, split: tuple[torch.Tensor, torch.Tensor] | None = None,
                     weight_decays: tuple[float, ...] = WEIGHT_DECAYS) -> dict[str, dict]:
    """Fit one linear head per (cell, weight decay) on `train` minus a held-out eighth (or on the
    (fit, validation) indices of `split`); returns per cell {"val_accuracy", "accuracy" (test),
    "weight_decay"} for the decay with the best validation accuracy. Features are tensors or
    memory-mapped arrays (`features.ShardedArray`), read batch by batch (see `Standardised`)."""
    fit_idx, val_idx = split if split is not None else holdout_split(len(train_y))
    classes = int(max(train_y.max(), test_y.max())) + 1
    cells = list(train)
    inputs = {c: Standardised(train[c], fit_idx) for c in cells}
    heads = nn.ModuleDict({f"{i}@{j}": nn.Linear(inputs[c].dim, classes)
                           for i, c in enumerate(cells) for j in range(len(weight_decays))})
    for head in heads.values():
        # from zero, as logistic regression usually starts: a cell's probe then depends on nothing but
        # its own features and the shared batch order, not on which other cells train beside it or in
        # what order (a random init made a sweep over cached features, whose keys come back sorted,
        # differ from the sweep that wrote them by up to 0.7 points per cell)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    groups = [{"params": [p for k, h in heads.items() if k.endswith(f"@{j}") for p in h.parameters()], "weight_decay": wd}
              for j, wd in enumerate(weight_decays)]
    opt = torch.optim.AdamW(groups, lr=lr)
    steps = epochs * math.ceil(len(fit_idx) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = fit_idx[torch.randperm(len(fit_idx), generator=gen)]
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            y = train_y[idx]
            loss = sum(nn.functional.cross_entropy(heads[f"{i}@{j}"](inputs[c][idx]), y)
                       for i, c in enumerate(cells) for j in range(len(weight_decays)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    test_inputs = {c: inputs[c].of(test[c]) for c in cells}
    return _score(heads, cells, inputs, train_y, val_idx, test_inputs, test_y, weight_decays)


def augmented_epochs(epochs: int, copies: int) -> int:
    """Epochs for a probe fit on its images plus `copies` augmented copies of them: about the optimiser
    steps of `epochs` on the images alone, but never fewer than 10 passes."""
    return max(10, round(epochs / (copies + 1)))


def cross_validated_accuracy(train: dict[str, torch.Tensor], train_y: torch.Tensor, weight_decay: dict[str, float],
                             folds: int = 5, epochs: int = 60, seed: int = 0,
                             copies: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """k-fold cross-validated accuracy of each cell's linear probe over all of `train` (each cell at its own
    weight decay): every sample is scored once, by a probe that never saw it. Folds are a seeded
    permutation; cells sharing a weight decay train together in one pass per fold. `copies`
    ({cell: features of m augmented copies of `train`, one whole copy after another}) adds the copies
    of each fold's fit samples to its fit set (never those of the held-out ones), for
    `augmented_epochs(epochs, m)` epochs, as the sweep's final refit trains."""
    n = len(train_y)
    if not 2 <= folds <= n:
        raise ValueError(f"cross-validation needs 2 to {n} folds, not {folds}")
    m = 0 if copies is None else len(next(iter(copies.values()))) // n
    if copies is not None and (set(copies) != set(train) or any(len(v) != m * n or m == 0 for v in copies.values())):
        raise ValueError(f"copies must hold, for each of the {len(train)} cells, whole copies of its {n} samples")
    if m:
        train = {k: torch.cat([v, copies[k]]) for k, v in train.items()}
        train_y, epochs = train_y.repeat(m + 1), augmented_epochs(epochs, m)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = order.chunk(folds)
    correct = dict.fromkeys(train, 0.0)
    for i, held in enumerate(parts):
        fit = torch.cat([p + c * n for j, p in enumerate(parts) if j != i for c in range(m + 1)])
        for wd in sorted(set(weight_decay.values())):
            cells = {k: v for k, v in train.items() if weight_decay[k] == wd}
            scores = train_probe_grid(cells, train_y, {k: v[held] for k, v in cells.items()}, train_y[held],
                                      epochs=epochs, seed=seed, split=(fit, held), weight_decays=(wd,))
            for k, r in scores.items():
                correct[k] += r["val_accuracy"] * len(held)
    return {k: c / n for k, c in correct.items()}


@torch.no_grad()
def _score(heads, cells, inputs, train_y, val_idx, test_inputs, test_y, weight_decays) -> dict[str, dict]:
    """Per cell, the head whose L2 strength scores best on validation; with no validation indices
    (a final refit on everything) there must be one strength and val_accuracy is None."""
    if len(val_idx) == 0 and len(weight_decays) != 1:
        raise ValueError("without validation indices there is nothing to choose a weight decay on; give one")
    results = {}
    for i, c in enumerate(cells):
        val = [_accuracy(heads[f"{i}@{j}"], inputs[c], val_idx, train_y[val_idx])
               if len(val_idx) else None for j in range(len(weight_decays))]
        j = 0 if len(val_idx) == 0 else max(range(len(val)), key=val.__getitem__)
        acc = _accuracy(heads[f"{i}@{j}"], test_inputs[c], torch.arange(len(test_y)), test_y)
        results[c] = {"val_accuracy": val[j], "accuracy": acc, "weight_decay": weight_decays[j]}
    return results


def _accuracy(head: nn.Module, x: Standardised, idx: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of rows `idx` of x that `head` labels y, read in chunks."""
    right = sum((head(x[idx[s:s + CHUNK]]).argmax(1) == y[s:s + CHUNK]).sum().item() for s in range(0, len(idx), CHUNK))
    return right / len(idx)
