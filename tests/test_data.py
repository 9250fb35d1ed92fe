"""Data helpers shared by every command."""

from __future__ import annotations

import pytest
import torch

from diffrep.errors import DiffrepError


def test_match_channels_for_one_image_or_a_batch():
    from diffrep.data import match_channels

    rgb = torch.stack([torch.full((2, 2), v) for v in (0.0, 0.3, 0.9)])           # 3×2×2
    grey = match_channels(rgb, 1)
    assert grey.shape == (1, 2, 2) and torch.allclose(grey, torch.full((1, 2, 2), 0.4))
    batch = match_channels(grey[None].repeat(2, 1, 1, 1), 3)                        # 2×1×2×2 -> 2×3×2×2
    assert batch.shape == (2, 3, 2, 2) and torch.equal(batch[:, 0], batch[:, 2])
    assert match_channels(rgb, 3) is rgb
    with pytest.raises(DiffrepError, match="4-channel images"):
        match_channels(rgb, 4)
