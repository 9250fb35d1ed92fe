"""Sub-pixel refinement of DIFT matches: the soft-argmax on hand-made windows, sub-pixel shifts of a
smooth code recovered, a deliberately coarse match refined, padding never matched, chunking and its
memory bound, and bad radius / temperature refused."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffrep import DiffrepError
from diffrep.correspond.dift import Refinement, match_maps, pixel_grid, prepare, refine_matches, soft_argmax
from diffrep.features import PEAK


def code(xy: torch.Tensor, channels: int = 32, width: float = 2.0) -> torch.Tensor:
    """A smooth descriptor of continuous positions (K×2 → K×2C): random Fourier features. Their cosine
    similarity depends only on the displacement, peaks at 0 and falls off over about `width` pixels."""
    freqs = torch.randn(channels, 2, generator=torch.Generator().manual_seed(0)) / width
    angle = xy @ freqs.T
    return torch.cat([angle.cos(), angle.sin()], 1)


def code_map(hw: tuple[int, int], where=lambda xy: xy, **kw) -> torch.Tensor:
    """C×h×w map whose pixel q holds the code of the continuous position where(q): an image of a
    continuous scene sampled exactly, however it is moved."""
    return code(where(pixel_grid(hw)), **kw).T.reshape(-1, *hw)


# ----------------------------------------------------------------------------- soft-argmax


def test_soft_argmax_of_a_gaussian_is_its_centre():
    """softmax(−|q − c|²/2) over a 7×7 window is a sampled unit Gaussian about c: its mean is c."""
    centre = torch.tensor([0.3, -0.2])
    sim = -((pixel_grid((7, 7)) - 3 - centre) ** 2).sum(1).view(7, 7) / 2
    assert torch.allclose(soft_argmax(sim, 1.0), centre, atol=0.01)
    assert soft_argmax(sim, None).tolist() == [0.0, 0.0]   # the hard argmax stays on the pixel
    window = torch.zeros(2, 3, 5)                          # batched, h ≠ w: offsets are (x, y) from the centre
    window[0, 0, 4] = window[1, 2, 1] = 1
    assert soft_argmax(window, None).tolist() == [[2.0, -1.0], [-1.0, 1.0]]
    assert torch.allclose(soft_argmax(window * 100, 1.0), torch.tensor([[2.0, -1.0], [-1.0, 1.0]]))


def test_sub_pixel_shift_recovered():
    """The target is the source moved by (0.3, −0.2) px: hard matches stay 0.36 px off, the
    soft-argmax lands within 0.25 px (here about 0.01)."""
    shift = torch.tensor([0.3, -0.2])
    src_fine, tgt_fine = code_map((24, 24)), code_map((24, 24), lambda q: q - shift)
    prep = prepare(torch.zeros(1, 24, 24), 1)
    points = torch.tensor([[5.0, 6.0], [12.0, 12.0], [18.0, 4.0], [9.0, 17.0]])   # inside, away from edges
    truth = points + shift
    hard = refine_matches(points, points, src_fine, prep, tgt_fine, prep, radius=3)
    soft = refine_matches(points, points, src_fine, prep, tgt_fine, prep, radius=3, temperature=0.1)
    assert ((hard - truth).norm(dim=1) >= 0.25).all() and torch.equal(hard, points)
    assert ((soft - truth).norm(dim=1) < 0.25).all()


# ----------------------------------------------------------------------------- coarse to fine


def test_refinement_improves_a_coarse_match():
    """Coarse descriptors constant over 4×4 blocks (a 4×-downsampled code) match to within a block;
    the per-pixel code inside a radius-5 window brings the hard match to the nearest pixel centre and
    the soft one below a tenth of a pixel. The target is the source rotated 10° and shifted."""
    hw, angle, shift, centre = (32, 32), math.radians(10), torch.tensor([1.3, -0.7]), torch.tensor([15.5, 15.5])
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    src_fine = code_map(hw, width=1.5)
    tgt_fine = code_map(hw, lambda q: (q - centre) @ rot.T + centre + shift, width=1.5)  # target q shows source…
    points = (torch.rand(40, 2, generator=torch.Generator().manual_seed(1)) * 20 + 6).round()
    truth = (points - shift - centre) @ rot + centre                                     # …so p is at this q

    def blocky(m):
        return F.interpolate(F.avg_pool2d(m[None], 4), scale_factor=4, mode="nearest")[0]

    prep = prepare(torch.zeros(1, *hw), 1)
    coarse = match_maps(blocky(src_fine), prep, blocky(tgt_fine), prep, points)
    hard = match_maps(blocky(src_fine), prep, blocky(tgt_fine), prep, points, refine=Refinement(src_fine, tgt_fine, 5))
    soft = match_maps(blocky(src_fine), prep, blocky(tgt_fine), prep, points,
                      refine=Refinement(src_fine, tgt_fine, 5, temperature=0.1))
    err = {name: (m.points - truth).norm(dim=1) for name, m in (("coarse", coarse), ("hard", hard), ("soft", soft))}
    assert err["coarse"].median() > 1.5
    assert err["hard"].max() <= math.sqrt(0.5) + 1e-4   # the nearest pixel centre, for every point
    assert err["soft"].median() < 0.1 and err["soft"].max() < 0.25
    assert torch.equal(soft.similarity, coarse.similarity)   # refinement moves matches, keeps their scores


def test_padding_is_never_a_match():
    """A 13×13 target padded to 16×16 (stride 8): the query's exact descriptor, planted in the padding
    inside the window, is ignored; the best matchable pixel wins."""
    gen = torch.Generator().manual_seed(3)
    src_fine, tgt_fine = torch.randn(8, 16, 16, generator=gen), torch.randn(8, 16, 16, generator=gen)
    tgt_fine[:, 5, 14] = src_fine[:, 5, 3]      # x = 14 lies in the padding
    tgt_fine[:, 4, 11] = src_fine[:, 5, 3] + 0.3 * torch.randn(8, generator=gen)   # the best real pixel
    src, tgt = prepare(torch.zeros(1, 16, 16), 8), prepare(torch.zeros(1, 13, 13), 8)
    assert tgt.hw == (13, 13) and tgt.padded_hw == (16, 16)
    coarse, point = torch.tensor([[12.0, 5.0]]), torch.tensor([[3.0, 5.0]])
    assert refine_matches(coarse, point, src_fine, src, tgt_fine, tgt, 3).tolist() == [[11.0, 4.0]]
    assert refine_matches(coarse, point, src_fine, src, tgt_fine, tgt, 3, 0.01)[0, 0] <= 12   # no weight beyond


# ----------------------------------------------------------------------------- chunks and memory


@pytest.mark.parametrize("temperature", [None, 0.1])
def test_chunks_give_the_same_matches_within_the_memory_bound(temperature):
    gen = torch.Generator().manual_seed(4)
    src_fine, tgt_fine = torch.randn(6, 5, 6, generator=gen), torch.randn(6, 5, 6, generator=gen)  # stride 4
    src, tgt = prepare(torch.zeros(1, 20, 24), 4), prepare(torch.zeros(1, 18, 22), 4)
    points, coarse = torch.rand(10, 2, generator=gen) * 19, (torch.rand(10, 2, generator=gen) * 17).round()
    window = 11 ** 2                                                       # radius 5
    PEAK.peak.clear()
    whole = refine_matches(coarse, points, src_fine, src, tgt_fine, tgt, 5, temperature)
    assert PEAK.peak["refinement window"] == 10 * window * (6 + 1) * 4     # default chunk: all 10 points fit
    PEAK.peak.clear()
    parts = refine_matches(coarse, points, src_fine, src, tgt_fine, tgt, 5, temperature, chunk=3)
    assert PEAK.peak["refinement window"] == 3 * window * (6 + 1) * 4      # descriptors + similarities of 3 points
    torch.testing.assert_close(parts, whole, atol=1e-6, rtol=0)
    assert not torch.equal(whole, coarse)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("radius", [0, -2, 65, 2.5, True, "3"])
def test_bad_radius_refused(radius):
    maps = torch.zeros(4, 8, 8)
    prep = prepare(torch.zeros(1, 8, 8), 1)
    for call in (lambda: Refinement(maps, maps, radius),
                 lambda: refine_matches(torch.zeros(1, 2), torch.zeros(1, 2), maps, prep, maps, prep, radius)):
        with pytest.raises(DiffrepError) as err:
            call()
        assert str(err.value) == f"refinement radius must be an integer from 1 to 64, got {radius!r}"


@pytest.mark.parametrize("temperature", [0, -0.1, float("nan"), float("inf"), "0.1"])
def test_bad_temperature_refused(temperature):
    maps = torch.zeros(4, 8, 8)
    prep = prepare(torch.zeros(1, 8, 8), 1)
    for call in (lambda: Refinement(maps, maps, 2, temperature), lambda: soft_argmax(torch.zeros(3, 3), temperature),
                 lambda: refine_matches(torch.zeros(1, 2), torch.zeros(1, 2), maps, prep, maps, prep, 2, temperature)):
        with pytest.raises(DiffrepError) as err:
            call()
        message = str(err.value)
        assert message.startswith("soft-argmax temperature must be a positive number") and "\n" not in message
        assert message.endswith(f"got {temperature!r}")


def test_bad_maps_and_matches_refused():
    prep = prepare(torch.zeros(1, 8, 8), 1)
    with pytest.raises(DiffrepError, match="fine descriptor maps differ in channels: source 4, target 5"):
        Refinement(torch.zeros(4, 8, 8), torch.zeros(5, 8, 8), 2)
    with pytest.raises(DiffrepError, match=r"target fine descriptor map must be C×h×w, got shape \(8, 8\)"):
        Refinement(torch.zeros(4, 8, 8), torch.zeros(8, 8), 2)
    maps = torch.zeros(4, 8, 8)
    with pytest.raises(DiffrepError, match=r"coarse matches outside the 8×8 image.*\(9, 1\)"):
        refine_matches(torch.tensor([[9.0, 1.0]]), torch.zeros(1, 2), maps, prep, maps, prep, 2)
    with pytest.raises(DiffrepError, match="2 source points but 1 coarse matches"):
        refine_matches(torch.zeros(1, 2), torch.zeros(2, 2), maps, prep, maps, prep, 2)
