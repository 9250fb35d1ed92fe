"""A grid of linear probes trained together in one pass over cached features (after dinov2's
`AllClassifiers`). Every cell (e.g. a t × block × pool combination) gets heads at several L2
strengths; features are standardised with the fit split's statistics; the strength of each cell, and
the best cell, are chosen on a held-out part of the fit split, never on the test split."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.precision import autocast_dtype, autocast_in
from ..data.holdout import holdout_split

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2)
"""The L2 strengths every probe of the grid is trained at; each cell keeps the one best on validation."""


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
        self.whole = None   # filled by `standardise_into` (a width group's buffer) or on first read
        self.dim = self.mean.numel()

    def _apply(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows.float() - self.mean) / self.std

    def in_memory(self) -> bool:
        return torch.is_tensor(self.source)

    def standardise_into(self, out: torch.Tensor) -> None:
        """All rows standardised into `out` (N×D, its own dtype), CHUNK rows at a time: the width
        group's stacked buffer is written once, without a float copy of every cell beside it."""
        rows = self.source.flatten(1)
        for start in range(0, len(rows), CHUNK):
            out[start:start + CHUNK] = self._apply(rows[start:start + CHUNK])
        self.whole = out

    def __getitem__(self, idx) -> torch.Tensor:
        if self.whole is None and self.in_memory():
            self.whole = self._apply(self.source.flatten(1))
        return self.whole[idx] if self.whole is not None else self._apply(self.source[idx].flatten(1))

    def of(self, x) -> "Standardised":
        """Other rows (the test split's) standardised with these statistics."""
        other = object.__new__(Standardised)
        other.mean, other.std, other.source, other.dim, other.whole = self.mean, self.std, x, self.dim, None
        return other


def train_probe_grid(train: dict, train_y: torch.Tensor, test: dict,
                     test_y: torch.Tensor, epochs: int = 60, batch_size: int = 256, lr: float = 1e-3,
                     seed: int = 0, progress=None, split: tuple[torch.Tensor, torch.Tensor] | None = None,
                     weight_decays: tuple[float, ...] | dict = WEIGHT_DECAYS, precision: str = "fp32") -> dict[str, dict]:
    """Fit one linear head per (cell, weight decay) on `train` minus a held-out eighth (or on the
    (fit, validation) indices of `split`); returns per cell {"val_accuracy", "accuracy" (test),
    "weight_decay"} for the decay with the best validation accuracy. `weight_decays` as a dict
    ({cell: decay}) gives each cell one head at its own decay instead (cross-validation's refits:
    every cell in one pass). Features are tensors or memory-mapped arrays (`features.ShardedArray`),
    read batch by batch (see `Standardised`).
    precision 'bf16': the standardised features are held in bf16 and the heads' matmuls run in bf16
    autocast (half the bytes read per step, the CPU's bf16 matmuls); the weights, the optimiser and the
    loss stay fp32, the loss as `_WidthGroup.fast_loss` and the optimiser torch's fused AdamW (each
    faster, and equal to fp32's to rounding: the main job's probes took 39 s instead of 55). The probes
    run on the CPU, where the features are."""
    low = autocast_dtype(precision, "cpu")
    fit_idx, val_idx = split if split is not None else holdout_split(len(train_y))
    classes = int(max(train_y.max(), test_y.max())) + 1
    cells = list(train)
    inputs = {c: Standardised(train[c], fit_idx) for c in cells}
    per_cell = isinstance(weight_decays, dict)
    groups = _width_groups(cells, inputs, classes * (1 if per_cell else len(weight_decays)), low or torch.float32)
    # AdamW's decoupled decay, column by column (each weight decay owns `classes` columns; or each cell
    # its row), applied by hand before each step as torch's AdamW does: one parameter then holds every
    # decay's heads
    for g in groups:
        g.decay = (torch.tensor([[weight_decays[c]] for c in g.cells]).repeat(1, classes)[:, None] if per_cell
                   else torch.tensor([wd for wd in weight_decays for _ in range(classes)]))
    # fp32 keeps torch's cross_entropy and the multi-tensor AdamW, which give its figures bit for bit;
    # reduced precision takes the faster loss and torch's fused AdamW (the same steps to rounding)
    fast = low is not None
    loss_of = _WidthGroup.fast_loss if fast else _WidthGroup.loss
    opt = torch.optim.AdamW([p for g in groups for p in g.parameters()], lr=lr, weight_decay=0.0,
                            **({"fused": True} if fast else {"foreach": True}))
    steps = epochs * math.ceil(len(fit_idx) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = fit_idx[torch.randperm(len(fit_idx), generator=gen)]
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            y = train_y[idx]
            with autocast_in("cpu", low):
                loss = sum(loss_of(g(g.rows(idx)), y, classes) for g in groups)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for g in groups:
                    factor = 1 - sched.get_last_lr()[0] * g.decay
                    g.weight.mul_(factor)
                    g.bias.mul_(factor)
            opt.step()
            sched.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    test_inputs = {c: inputs[c].of(test[c]) for c in cells}
    with autocast_in("cpu", low):
        return _score(groups, train_y, val_idx, test_inputs, test_y, weight_decays, classes)


class _WidthGroup(nn.Module):
    """The linear heads of every cell of one feature width, every weight decay's side by side
    (n cells × D × decays·classes): one batched matmul instead of a few hundred small ones. Each head
    starts from zero, as logistic regression usually does: a cell's probe then depends on nothing but
    its own features and the shared batch order, not on which other cells train beside it (a random
    init made a sweep over cached features, whose keys come back sorted, differ from the sweep that
    wrote them by up to 0.7 points per cell)."""

    def __init__(self, cells: list, inputs: dict, outputs: int, storage: torch.dtype = torch.float32):
        super().__init__()
        self.cells, self.inputs = cells, [inputs[c] for c in cells]
        dim = self.inputs[0].dim
        self.weight = nn.Parameter(torch.zeros(len(cells), dim, outputs))
        self.bias = nn.Parameter(torch.zeros(len(cells), 1, outputs))
        self.stacked = None
        if all(x.in_memory() for x in self.inputs):   # in memory: one tensor, the cells' rows views of it
            self.stacked = torch.empty(len(cells), len(self.inputs[0].source), dim, dtype=storage)
            for k, x in enumerate(self.inputs):
                x.standardise_into(self.stacked[k])

    def rows(self, idx, inputs=None) -> torch.Tensor:
        """n cells × len(idx) × D standardised rows."""
        if inputs is None and self.stacked is not None:
            return self.stacked.index_select(1, idx)   # the same rows as [:, idx], a third faster on the CPU
        return torch.stack([x[idx] for x in (inputs or self.inputs)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    @staticmethod
    def loss(logits: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
        """The sum over heads of each head's mean cross-entropy (torch's cross_entropy: the fp32
        probes' figures)."""
        n, b, out = logits.shape
        heads = out // classes
        target = y.view(1, b, 1).expand(n, b, heads).reshape(-1)
        return nn.functional.cross_entropy(logits.reshape(-1, classes), target) * (n * heads)

    @staticmethod
    def fast_loss(logits: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
        """The same sum as `loss`, in fp32, written as log-sum-exp minus the true class's logit: about
        3× faster on the CPU, where log_softmax over a last dimension of 10 classes runs far below the
        memory's speed; it agrees with `loss` to rounding (the bf16 probes use it; fp32 keeps `loss`,
        so that its figures stay bit for bit those it has always given)."""
        n, b, out = logits.shape
        z = logits.float().view(n, b, out // classes, classes)
        top = z.detach().amax(-1, keepdim=True)   # for stability only: the gradient does not depend on it
        lse = (z - top).exp().sum(-1).log() + top.squeeze(-1)
        true = z.gather(-1, y.view(1, b, 1, 1).expand(n, b, out // classes, 1)).squeeze(-1)
        return (lse - true).sum() / b


def _width_groups(cells: list, inputs: dict, outputs: int, storage: torch.dtype = torch.float32) -> list[_WidthGroup]:
    by_dim: dict[int, list] = {}
    for c in cells:
        by_dim.setdefault(inputs[c].dim, []).append(c)
    return [_WidthGroup(group, inputs, outputs, storage) for group in by_dim.values()]


def augmented_epochs(epochs: int, copies: int) -> int:
    """Epochs for a probe fit on its images plus `copies` augmented copies of them: about the optimiser
    steps of `epochs` on the images alone, but never fewer than 10 passes."""
    return max(10, round(epochs / (copies + 1)))


def cross_validated_accuracy(train: dict[str, torch.Tensor], train_y: torch.Tensor, weight_decay: dict[str, float],
                             folds: int = 5, epochs: int = 60, seed: int = 0,
                             copies: dict[str, torch.Tensor] | None = None, precision: str = "fp32") -> dict[str, float]:
    """k-fold cross-validated accuracy of each cell's linear probe over all of `train` (each cell at its own
    weight decay): every sample is scored once, by a probe that never saw it. Folds are a seeded
    permutation; every cell, each at its own weight decay, trains in one pass per fold. `copies`
    ({cell: features of m augmented copies of `train`, one whole copy after another}) adds the copies
    of each fold's fit samples to its fit set (never those of the held-out ones), for
    `augmented_epochs(epochs, m)` epochs, as the sweep's final refit trains. `precision`: as
    `train_probe_grid`'s."""
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
        scores = train_probe_grid(train, train_y, {k: v[held] for k, v in train.items()}, train_y[held],
                                  epochs=epochs, seed=seed, split=(fit, held), weight_decays=weight_decay,
                                  precision=precision)
        for k, r in scores.items():
            correct[k] += r["val_accuracy"] * len(held)
    return {k: c / n for k, c in correct.items()}


@torch.no_grad()
def _score(groups, train_y, val_idx, test_inputs, test_y, weight_decays, classes) -> dict:
    """Per cell, the head whose L2 strength scores best on validation; with no validation indices
    (a final refit on everything) there must be one strength and val_accuracy is None."""
    per_cell = isinstance(weight_decays, dict)
    if len(val_idx) == 0 and not per_cell and len(weight_decays) != 1:
        raise ValueError("without validation indices there is nothing to choose a weight decay on; give one")
    results = {}
    for g in groups:
        val = _right(g, val_idx, train_y[val_idx], classes) / max(len(val_idx), 1)
        test = _right(g, torch.arange(len(test_y)), test_y, classes, [test_inputs[c] for c in g.cells]) / len(test_y)
        for k, c in enumerate(g.cells):
            decays = (weight_decays[c],) if per_cell else weight_decays
            j = 0 if len(val_idx) == 0 else max(range(len(decays)), key=lambda j: val[k, j].item())
            results[c] = {"val_accuracy": val[k, j].item() if len(val_idx) else None, "accuracy": test[k, j].item(),
                          "weight_decay": decays[j]}
    return results


def _right(group: _WidthGroup, idx: torch.Tensor, y: torch.Tensor, classes: int, inputs=None) -> torch.Tensor:
    """n cells × heads: how many of rows `idx` each head labels y, read in chunks."""
    right = torch.zeros(len(group.cells), group.weight.shape[-1] // classes, dtype=torch.long)
    for s in range(0, len(idx), CHUNK):
        logits = group(group.rows(idx[s:s + CHUNK], inputs))
        n, b, out = logits.shape
        pred = logits.view(n, b, out // classes, classes).argmax(-1)
        right += (pred == y[s:s + CHUNK].view(1, b, 1)).sum(1)
    return right.double()
