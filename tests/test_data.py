"""Data helpers shared by every command."""

from __future__ import annotations

import pytest
import torch

from diffrep import DiffrepError


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


def test_random_distort_is_seeded_bounded_and_identity_at_zero():
    from diffrep.data import Distortion, random_distort

    x = torch.full((6, 1, 16, 16), -1.0)
    x[:, :, 4:12, 6:10] = 1.0  # a bar on black, as a digit
    distort = lambda d, seed=0: random_distort(x, d, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(distort(Distortion(0, 0, 0, 0, 0)), x)  # nothing asked, nothing changed
    y = distort(Distortion())
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert not torch.allclose(y, x) and not torch.allclose(y[0], y[1])  # each image its own draw
    torch.testing.assert_close(y, distort(Distortion()))                # same seed, same copies
    assert not torch.allclose(y, distort(Distortion(), seed=1))


def test_random_distort_moves_by_the_asked_amounts():
    from diffrep.data import Distortion, random_distort

    x = torch.full((200, 1, 32, 32), -1.0)
    x[:, :, 15:17, 15:17] = 1.0  # a dot at the centre, (15.5, 15.5)
    def centres(d):
        w = random_distort(x, d, torch.Generator().manual_seed(0))[:, 0] + 1
        grid = torch.arange(32.0)
        return (w.sum(2) * grid).sum(1) / w.sum((1, 2)), (w.sum(1) * grid).sum(1) / w.sum((1, 2))
    rows, cols = centres(Distortion(0, 0, 0, shift=3, elastic=0))
    assert (rows - 15.5).abs().max() <= 3.01 and (cols - 15.5).abs().max() <= 3.01
    assert (rows - 15.5).abs().max() > 2 and (cols - 15.5).abs().max() > 2  # the whole range is used
    rows, cols = centres(Distortion(rotate=30, scale=0.2, shear=0.3, shift=0, elastic=0))
    torch.testing.assert_close(rows, torch.full_like(rows, 15.5), atol=0.05, rtol=0)  # the centre is the fixed point
    rows, cols = centres(Distortion(0, 0, 0, shift=0, elastic=1.5))
    assert (rows - 15.5).abs().max() <= 1.6 and (cols - 15.5).abs().max() <= 1.6 and (rows - 15.5).abs().max() > 0.3


def test_a_distorted_copy_is_the_same_whatever_the_batching():
    """Image i's distortion comes from (seed, copy, i) alone: read one by one, in batches through the
    DataLoader (the batched resampling), or in another order, each image comes out bit for bit the same."""
    from diffrep.data import DistortedCopy, Distortion, ImageBatches

    x = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    copy = DistortedCopy(Distortion(), seed=3, copy=1)
    one_by_one = torch.stack([copy(x[i], i) for i in range(10)])
    batched = torch.cat([b for _, b in ImageBatches(x, 4, transform=copy)])
    assert torch.equal(batched, one_by_one) and not torch.allclose(one_by_one, x)
    order = [7, 2, 9]
    assert torch.equal(copy.batch(x[order], order), one_by_one[order])
    assert not torch.equal(DistortedCopy(Distortion(), seed=3, copy=2)(x[0], 0), one_by_one[0])


def test_distortion_draws_are_the_sequence_of_one_call_per_draw():
    """The draws come as one vector from the generator; they must be the values that a call per draw
    (rotation, scale, shear, x and y shift, then the elastic noise) gave, which earlier runs used."""
    from diffrep.data import Distortion
    from diffrep.data.augment import _draws

    d = Distortion()
    got = _draws(d, torch.Generator().manual_seed(7), 3, 8, 8)
    gen = torch.Generator().manual_seed(7)
    for name, amount in (("angle", d.rotate), ("zoom", d.scale), ("shear", d.shear), ("dx", d.shift), ("dy", d.shift)):
        assert torch.equal(got[name], (torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1) * amount)
    assert torch.equal(got["noise"], torch.rand(3, 2, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1)


def test_distortion_refuses_bad_amounts():
    from diffrep.data import Distortion

    with pytest.raises(DiffrepError, match="--shear must be at least 0, not -0.1"):
        Distortion(shear=-0.1)
    with pytest.raises(DiffrepError, match="--scale must be below 1, not 1.5"):
        Distortion(scale=1.5)
