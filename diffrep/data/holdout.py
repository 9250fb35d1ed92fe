"""The fixed validation part of a train split, the same everywhere: the probes choose on it and
`diffrep pretrain` leaves it out, so that choosing on it cannot favour what a generative model
memorised."""

from __future__ import annotations

import torch


def holdout_split(n: int, fraction: float = 0.125, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, validation) of a fixed seeded split of n train-split samples. The same split
    everywhere: `diffrep pretrain` leaves the validation part out, so that choosing cells on it is
    not biased towards what the generative model memorised."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = n - max(1, int(round(n * fraction)))
    return order[:cut], order[cut:]
