"""DDPM-Seg's head: K independent per-pixel MLPs, majority vote, and the ensemble's uncertainty.

Each MLP is Linear(C, h1) → ReLU → BatchNorm → Linear(h1, h2) → ReLU → BatchNorm → Linear(h2, classes)
with (h1, h2) = (128, 32), or (256, 128) at 30 classes or more. The K MLPs are held as stacked K×…
tensors and run as one batched matrix product: each head still has its own initialisation, its own
pixel order and its own BatchNorm statistics, and Adam's update is element-wise, so this trains
exactly K independent networks, only without K Python loops. Inputs are standardised with the
per-channel mean and standard deviation of the first training pool (features of different blocks
differ in scale by orders of magnitude). Early stopping keeps, per head, the weights of the epoch
with the lowest loss on held-out labelled pixels.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm


def hidden_sizes(n_classes: int) -> tuple[int, int]:
    return (256, 128) if n_classes >= 30 else (128, 32)


class PixelMLPs(torch.nn.Module):
    """K per-pixel MLPs C→h1→h2→classes. forward(x: B×C or K×B×C) -> K×B×classes logits."""

    def __init__(self, channels: int, n_classes: int, k: int = 10, hidden: tuple[int, int] | None = None, seed: int = 0):
        super().__init__()
        self.k, self.channels, self.n_classes = k, channels, n_classes
        self.hidden = tuple(hidden or hidden_sizes(n_classes))
        gen = torch.Generator().manual_seed(seed)
        sizes = [channels, *self.hidden, n_classes]
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            bound = 1 / math.sqrt(fan_in)   # torch.nn.Linear's default initialisation, drawn per head
            self.register_parameter(f"w{i}", torch.nn.Parameter((torch.rand(k, fan_in, fan_out, generator=gen) * 2 - 1) * bound))
            self.register_parameter(f"b{i}", torch.nn.Parameter((torch.rand(k, 1, fan_out, generator=gen) * 2 - 1) * bound))
        for i, width in enumerate(self.hidden):
            self.register_parameter(f"bn{i}_weight", torch.nn.Parameter(torch.ones(k, width)))
            self.register_parameter(f"bn{i}_bias", torch.nn.Parameter(torch.zeros(k, width)))
            self.register_buffer(f"bn{i}_mean", torch.zeros(k, width))
            self.register_buffer(f"bn{i}_var", torch.ones(k, width))
        self.register_buffer("in_mean", torch.zeros(channels))
        self.register_buffer("in_std", torch.ones(channels))

    def _batch_norm(self, h: torch.Tensor, i: int) -> torch.Tensor:
        """BatchNorm of each head on its own: K×B×H laid out as B×(K·H) channels. The running statistics
        are K×H buffers passed as flat views, so F.batch_norm updates them in place."""
        k, b, width = h.shape
        flat = h.transpose(0, 1).reshape(b, k * width)
        flat = F.batch_norm(flat, getattr(self, f"bn{i}_mean").view(-1), getattr(self, f"bn{i}_var").view(-1),
                            getattr(self, f"bn{i}_weight").view(-1), getattr(self, f"bn{i}_bias").view(-1),
                            training=self.training, momentum=0.1, eps=1e-5)
        return flat.view(b, k, width).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.in_mean) / self.in_std
        h = x.expand(self.k, *x.shape) if x.ndim == 2 else x
        for i in range(len(self.hidden)):
            h = self._batch_norm(F.relu(torch.baddbmm(getattr(self, f"b{i}"), h, getattr(self, f"w{i}"))), i)
        last = len(self.hidden)
        return torch.baddbmm(getattr(self, f"b{last}"), h, getattr(self, f"w{last}"))

    def set_standardisation(self, x: torch.Tensor) -> None:
        self.in_mean.copy_(x.mean(0))
        self.in_std.copy_(x.std(0).clamp_min(1e-6))

    def take_heads(self, source: "PixelMLPs", heads: torch.Tensor) -> None:
        """Copy the weights of `heads` (a K-long bool mask) from `source`: per-head early stopping."""
        for name, tensor in self.state_dict().items():
            if tensor.ndim and tensor.shape[0] == self.k and not name.startswith("in_"):
                tensor[heads] = source.state_dict()[name][heads]


# ----------------------------------------------------------------------------- vote and uncertainty

def majority_vote(logits: torch.Tensor) -> torch.Tensor:
    """K×P×classes logits -> P labels: the class most heads pick; ties go to the tied class with the
    highest mean softmax probability (a fraction < 1 added to whole vote counts)."""
    votes = F.one_hot(logits.argmax(-1), logits.shape[-1]).sum(0).float()
    return (votes + 0.5 * logits.softmax(-1).mean(0)).argmax(-1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def ensemble_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """K×P×classes logits -> P: entropy of the mean softmax minus the mean of the heads' entropies
    (the heads' disagreement; 0 when all heads give the same distribution)."""
    probs = logits.softmax(-1)
    return (entropy(probs.mean(0)) - entropy(probs).mean(0)).clamp_min(0)


# ----------------------------------------------------------------------------- training

def _held_out_loss(heads: PixelMLPs, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Per-head mean cross-entropy on held-out pixels (K values)."""
    heads.eval()
    total = torch.zeros(heads.k)
    with torch.no_grad():
        for s in range(0, len(x), chunk):
            logits = heads(x[s:s + chunk])
            target = y[s:s + chunk].expand(heads.k, -1)
            total += F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(1)
    return total / max(len(x), 1)


def _epoch(heads: PixelMLPs, opt, x: torch.Tensor, y: torch.Tensor, batch: int, gen: torch.Generator) -> float:
    """One pass over a pool; every head sees the pixels in its own random order."""
    heads.train()
    order = torch.rand(heads.k, len(x), generator=gen).argsort(1)
    losses = []
    for s in range(0, len(x) - batch + 1, batch):   # BatchNorm wants full batches
        idx = order[:, s:s + batch]
        logits = heads(x[idx])
        loss = F.cross_entropy(logits.reshape(-1, heads.n_classes), y[idx].reshape(-1)) * heads.k
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item() / heads.k)
    return sum(losses) / max(len(losses), 1)


def train_heads(heads: PixelMLPs, draw_pool, val: tuple[torch.Tensor, torch.Tensor], lr: float = 1e-3,
                batch: int = 64, max_epochs: int = 20, patience: int = 3, seed: int = 0, desc: str = "heads") -> dict:
    """Train `heads` with Adam on pools of sampled pixels, `draw_pool(epoch) -> (x, y)` (a fresh draw
    from the feature cache each epoch), stopping each head when its held-out loss has not improved for
    `patience` epochs; each head ends with its best weights. Returns a log."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(heads.parameters(), lr=lr)
    best_loss, best, stale = torch.full((heads.k,), float("inf")), None, torch.zeros(heads.k, dtype=torch.long)
    log = []
    bar = tqdm(range(max_epochs), desc=desc, dynamic_ncols=True, disable=desc is None)
    for epoch in bar:
        x = y = None   # let the last pool go before drawing the next: one pool in RAM at a time
        x, y = draw_pool(epoch)
        if epoch == 0:
            heads.set_standardisation(x)
        if len(x) < batch:
            batch = len(x)
        train_loss = _epoch(heads, opt, x, y, batch, gen)
        val_loss = _held_out_loss(heads, *val) if len(val[0]) else torch.full((heads.k,), train_loss)
        better = val_loss < best_loss
        best_loss = torch.where(better, val_loss, best_loss)
        stale = torch.where(better, torch.zeros_like(stale), stale + 1)
        if best is None:
            best = copy.deepcopy(heads)
        best.take_heads(heads, better)
        log.append({"epoch": epoch, "train_loss": round(train_loss, 4), "held_out_loss": val_loss.mean().item()})
        bar.set_postfix(loss=f"{train_loss:.3f}", held_out=f"{val_loss.mean().item():.3f}")
        if bool((stale >= patience).all()):
            break
    bar.close()
    heads.load_state_dict(best.state_dict())
    heads.eval()
    return {"epochs": len(log), "best_held_out_loss": best_loss.tolist(), "log": log}
