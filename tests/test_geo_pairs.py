"""The geo correspondence benchmark (unseen photographs under strong rotation, zoom and tilt): seeded,
exact ground truth, keypoints inside both images, no pre-training photograph; match-eval on it; bad
arguments refused. And the warps pairs, unchanged by the refactor that geo shares their machinery through."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffrep import DiffrepError
from diffrep.cli import main
from diffrep.data import geo_pair, geo_pairs, load_pairs, warp_pair
from diffrep.data.photos import PHOTOS, UNSEEN, photo
from diffrep.features import sample_at
from diffrep.metrics import ALPHAS

# digest() of warps pairs, computed with the code before geo's refactor of pairs.py (and photos.py):
# (index, size, seed) -> digest.
WARPS_DIGESTS = {(0, 64, 0): "c0288e5b931f98be", (1, 64, 0): "5ef6f3e0871d3992", (6, 64, 0): "7560681524afee55",
                 (3, 128, 1): "fa089e87f3ad71a6", (16, 48, 1): "4ca79fd27fcd996d"}


def digest(pair) -> str:
    """sha256 (first 16 hex) of source, target, source and target keypoints, rounded to integers of
    1e-4 (images) and 1e-3 (keypoints) first: the last bits of a float differ across platforms and BLAS."""
    h = hashlib.sha256()
    for t, decimals in ((pair.source, 4), (pair.target, 4), (pair.source_points, 3), (pair.target_points, 3)):
        h.update(np.round(t.double().numpy() * 10 ** decimals).astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def thumbnail(image: torch.Tensor) -> torch.Tensor:
    """An image's grey 32×32 thumbnail, standardised: the same scene at any size or format gives the same."""
    t = F.interpolate(image.mean(0)[None, None], size=(32, 32), mode="bilinear", antialias=True,
                      align_corners=False).flatten()
    return (t - t.mean()) / t.std()


def similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """The correlation of two images' thumbnails (1: the same scene)."""
    return float((thumbnail(a) * thumbnail(b)).mean())


def test_warps_pairs_unchanged():
    for args, expected in WARPS_DIGESTS.items():
        assert digest(warp_pair(*args)) == expected, args


def test_geo_is_seeded():
    a, b, other = geo_pair(4, 64, seed=1), geo_pair(4, 64, seed=1), geo_pair(4, 64, seed=0)
    assert digest(a) == digest(b)
    assert not torch.equal(a.target, other.target) and not torch.equal(a.source_points, other.source_points)
    assert a.name == "geo004-" + UNSEEN[4 % len(UNSEEN)] and a.threshold_size == 64
    assert digest(geo_pair(4, 64, seed=1)) != digest(warp_pair(4, 64, seed=1))


def test_geo_ground_truth_is_exact():
    """Without the photometric jitter, source and target agree at the true keypoints to interpolation
    error, and agree less at the keypoints moved half a pixel any way, in every pair: the truth is not
    off by a fraction of a pixel. The jitter changes the target's pixels only."""
    shifts = [(0.0, 0.0), (0.5, 0.0), (-0.5, 0.0), (0.0, 0.5), (0.0, -0.5)]
    errors = torch.zeros(len(shifts))
    for i in range(6):
        exact, jittered = geo_pair(i, 128, seed=1, keypoints=100, jitter=False), geo_pair(i, 128, seed=1, keypoints=100)
        assert torch.equal(exact.source, jittered.source) and not torch.equal(exact.target, jittered.target)
        assert torch.equal(exact.target_points, jittered.target_points)
        a = sample_at(exact.source, exact.source_points, (128, 128))
        moved = [exact.target_points + torch.tensor(shift) for shift in shifts]
        per_shift = torch.stack([(a - sample_at(exact.target, pts, (128, 128))).abs().mean() for pts in moved])
        assert per_shift[0] < per_shift[1:].min(), (exact.name, per_shift)
        errors += per_shift / 6
        shuffled = sample_at(exact.target, exact.target_points.roll(1, 0), (128, 128))
        assert (a - shuffled).abs().mean() > 3 * per_shift[0]
    # The interpolation error grows with the texture's contrast: the shaded terrain's is the largest (0.03).
    assert errors[0] < 0.025 and errors[0] < 0.7 * errors[1:].min(), errors


def test_geo_keypoints_inside_both_images_and_moved_far():
    pairs = geo_pairs(12, 64, seed=0)
    moved = []
    for pair in pairs:
        assert len(pair.source_points) == 20 and pair.source.shape == pair.target.shape == (3, 64, 64)
        for pts in (pair.source_points, pair.target_points):
            assert ((pts >= 0) & (pts <= 63)).all()
        moved.append((pair.source_points - pair.target_points).norm(dim=1).median().item())
    assert np.median(moved) > 0.15 * 64   # the warps benchmark's keypoints move a few pixels


def test_geo_photographs_are_unseen():
    """No geo image is a pre-training photograph, even under another name, size or format: compared by
    thumbnails, which do catch `cat` (scikit-image's other name for `chelsea`) and a resized copy."""
    assert not set(UNSEEN) & set(PHOTOS)
    assert similarity(photo("cat"), photo("chelsea")) > 0.99
    resized = F.interpolate(photo("astronaut")[None], scale_factor=0.37, mode="bilinear", antialias=True)[0]
    assert similarity(resized, photo("astronaut")) > 0.99
    for name in UNSEEN:   # the closest pair of PHOTOS (the two motorcycle views) scores 0.80
        assert max(similarity(photo(name), photo(seen)) for seen in PHOTOS) < 0.9, name
    assert {p.name.split("-", 1)[1] for p in geo_pairs(len(UNSEEN), 32)} == set(UNSEEN)


def test_geo_images_load_from_both_sources():
    """matplotlib's sample data and scikit-image's, as 3×H×W in [-1, 1], read once."""
    for name in UNSEEN:
        image = photo(name)
        assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3, name
        assert -1 <= image.min() < image.max() <= 1 and photo(name) is image, name
    hopper, terrain = photo("grace_hopper"), photo("terrain")
    assert hopper.shape == (3, 600, 512) and not torch.equal(hopper[0], hopper[2])   # a colour photograph
    assert terrain.shape == (3, 344, 403) and torch.equal(terrain[0], terrain[2])   # grey, shaded relief
    assert terrain.std() > 0.2   # texture everywhere: the shading is not washed out


def test_load_pairs_geo():
    pairs, size, rule = load_pairs("geo", n=2, size=32, seed=1)
    assert size is None and "geo" in rule and [p.name for p in pairs] == ["geo000-grace_hopper", "geo001-terrain"]
    assert digest(pairs[1]) == digest(geo_pair(1, 32, seed=1))


def test_match_eval_geo(unet_dir, tmp_path, capsys):
    out = tmp_path / "geo"
    assert main(["match-eval", "--benchmark", "geo", "--pairs", "3", "--size", "32", "--ensemble", "1", "--seed", "1",
                 "--model", str(unet_dir), "--no-baselines", "--examples", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "match-eval.json").read_text())
    assert result["benchmark"] == "geo" and result["n_pairs"] == 3 and result["n_points"] == 60
    assert "geo images have no boxes" in result["threshold"] and set(result["methods"]) == {"diffusion"}
    r = result["methods"]["diffusion"]
    pcks = [r[str(a)]["per_point"] for a in ALPHAS]
    assert all(0 <= v <= 100 for v in pcks) and pcks == sorted(pcks)
    assert r["median_epe"]["per_point"] >= 0 and r["median_epe"]["per_image"] >= 0
    assert sorted(r["pck@0.1_per_pair"]) == ["geo000-grace_hopper", "geo001-terrain", "geo002-text"]
    assert "PCK (%) on geo (3 pairs, 60 points)" in printed and "median EPE" in printed
    assert len(list(out.glob("example-geo000-*.png"))) == 1


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "geo", "--spair", "/nowhere"], "--spair runs the SPair-71k benchmark, --benchmark geo"),
    (["--benchmark", "geo", "--size", "8"], "geo needs at least 1 pair and size ≥ 16, got 1 pairs of 8×8"),
    (["--benchmark", "geometric"], "--benchmark must be one of warps, geo, spair, not 'geometric'"),
])
def test_match_eval_geo_bad_arguments(unet_dir, tmp_path, capsys, args, message):
    code = main(["match-eval", *args, "--pairs", "1", "--model", str(unet_dir), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_geo_pairs_bad_counts():
    with pytest.raises(DiffrepError, match="geo needs at least 1 pair"):
        geo_pairs(0, 64)
