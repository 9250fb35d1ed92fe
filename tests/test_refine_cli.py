"""Refinement end to end: `match-eval --refine` scores the refined row beside the coarse one from the
same matches (warps and SPair-71k), `match --refine` records both points of each match, Python's
`match(…, refine=refiner(…))` recovers a known shift exactly wherever the window reaches it, and
bad --refine settings are refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from diffrep import DiffrepError, Featurizer, load_backbone
from diffrep.cli import main
from diffrep.correspond.dift import (DiffusionDescriber, MatchEvalConfig, match, pixel_describer, refine_matches,
                                     refiner, run_match_sweep)
from diffrep.correspond.dift.evaluate import temperature
from diffrep.metrics import ALPHAS

from . import test_correspond
from .test_bad_input import run_bad

spair_dir, two_photos = test_correspond.spair_dir, test_correspond.two_photos   # fixtures shared with those tests
TINY = ["--size", "32", "--ensemble", "1"]   # the tiny UNet's default block is mid_block: cells of 2 px


def match_eval(unet_dir, out, *extra) -> dict:
    assert main(["match-eval", "--model", str(unet_dir), *TINY, "--examples", "1", "--out", str(out), *extra]) == 0
    return json.loads((out / "match-eval.json").read_text())


def scores(row: dict) -> list:
    return [row[str(a)]["per_point"] for a in ALPHAS] + [row["median_epe"]["per_point"]]


# ----------------------------------------------------------------------------- match-eval


def test_match_eval_refined_row_beside_the_coarse_one(unet_dir, tmp_path, capsys):
    """Refined by a finer block (up_blocks.1, stride 1, under mid_block's 2): the table has DIFT, DIFT +
    refine, pixels and DAISY; the coarse row is exactly the unrefined run's; the refined one differs."""
    result = match_eval(unet_dir, tmp_path / "r", "--pairs", "3", "--refine", "up_blocks.1",
                        "--refine-temperature", "0.05")
    printed = capsys.readouterr().out
    methods = result["methods"]
    assert list(methods) == ["diffusion", "diffusion+refine", "pixels", "daisy"]
    assert result["refined_methods"] == ["diffusion+refine"]
    settings = {"fine": "up_blocks.1", "t": 0, "cell": 1.0, "radius": 1, "window": 3, "temperature": 0.05,
                "argmax": "soft", "coarse_weight": 0.0, "min_similarity": None,
                "mutual": True}   # defaults: t the lightest, radius half a mid_block cell, the mutual check
    assert result["refine"] == methods["diffusion+refine"]["refine"] == settings
    assert "refine" not in methods["diffusion"] and "refine" not in methods["daisy"]
    for row in methods.values():
        pck = scores(row)[:-1]
        assert len(pck) == 5 and all(0 <= v <= 100 for v in pck) and pck == sorted(pck)
        assert row["median_epe"]["per_point"] > 0 and row["median_epe"]["per_image"] > 0
    assert len(methods["diffusion+refine"]["pck@0.1_per_pair"]) == 3
    assert scores(methods["diffusion+refine"]) != scores(methods["diffusion"])   # the matches moved
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["refine"], config["refine_temperature"], config["refine_radius"]) == ("up_blocks.1", 0.05, None)
    assert "diffusion+refine (mid_block, t=0; refined by up_blocks.1 t=0, window 3×3, T=0.05, mutual)" in printed
    assert "diffusion (mid_block, t=0)" in printed and "daisy (daisy)" in printed

    plain = match_eval(unet_dir, tmp_path / "p", "--pairs", "3", "--no-baselines")
    assert list(plain["methods"]) == ["diffusion"] and plain["refine"] is None and plain["refined_methods"] == []
    assert methods["diffusion"] == plain["methods"]["diffusion"]   # the same coarse matches, to the last per-pair score


def test_match_eval_spair_refined_with_pixels(unet_dir, spair_dir, tmp_path):
    """SPair-71k refined by raw pixels (no noise level), a 7×7 hard window."""
    result = match_eval(unet_dir, tmp_path / "s", "--spair", str(spair_dir), "--no-baselines", "--refine", "pixels",
                        "--refine-radius", "3", "--refine-temperature", "hard")
    assert result["benchmark"] == "spair" and result["n_points"] == 5
    assert list(result["methods"]) == ["diffusion", "diffusion+refine"]
    assert result["refine"] == {"fine": "pixels9x9", "t": None, "cell": 1.0, "radius": 3, "window": 7,
                                "temperature": None, "argmax": "hard", "coarse_weight": 0.0, "min_similarity": None, "mutual": True}
    assert all(len(scores(r)) == 6 for r in result["methods"].values())


# ----------------------------------------------------------------------------- match and Python's match()


def test_match_command_records_refined_and_coarse_points(unet_dir, two_photos, tmp_path):
    args = ["match", *map(str, two_photos), "--points", "12,20;30,5;20,30", "--model", str(unet_dir),
            "--ensemble", "1"]
    assert main([*args, "--out", str(tmp_path / "c.png")]) == 0
    assert main([*args, "--refine", "up_blocks.1", "--refine-radius", "3", "--refine-temperature", "0.1",
                 "--no-refine-mutual", "--out", str(tmp_path / "r.png")]) == 0
    plain, refined = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("c", "r"))
    assert plain["refine"] is None and "coarse" not in plain["matches"][0]
    assert refined["refine"] == {"fine": "up_blocks.1", "t": 0, "cell": 1.0, "radius": 3, "window": 7,
                                 "temperature": 0.1, "argmax": "soft", "coarse_weight": 0.0, "min_similarity": None, "mutual": False}
    for before, row in zip(plain["matches"], refined["matches"]):
        assert row["coarse"] == before["target"] and row["similarity"] == before["similarity"]
        assert all(abs(a - b) <= 3 for a, b in zip(row["target"], row["coarse"]))   # inside the window (no resize)
    assert any(row["target"] != row["coarse"] for row in refined["matches"])
    assert (tmp_path / "r.png").stat().st_size > 0


def test_match_flow_is_refined_like_the_points(unet_dir, two_photos, tmp_path):
    """--flow with --refine: the dense flow at each --points pixel is that point's refined match (no resize:
    the flow's pixel grid holds the points), and it differs from the coarse flow somewhere."""
    import numpy as np

    points = [(12, 20), (30, 5), (20, 30)]
    args = ["match", *map(str, two_photos), "--points", ";".join(f"{x},{y}" for x, y in points), "--model",
            str(unet_dir), "--ensemble", "1", "--flow"]
    assert main([*args, "--out", str(tmp_path / "c.png")]) == 0
    assert main([*args, "--refine", "up_blocks.1", "--refine-temperature", "0.1", "--refine-coarse-weight", "0.3",
                 "--out", str(tmp_path / "r.png")]) == 0
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["refine"]["coarse_weight"] == 0.3
    coarse_flow, flow = (np.load(tmp_path / f"{n}-flow.npz")["target_xy"] for n in ("c", "r"))
    for (x, y), row in zip(points, record["matches"]):
        assert np.allclose(flow[y, x], row["target"], atol=0.01) and np.allclose(coarse_flow[y, x], row["coarse"])
    assert not np.allclose(flow, coarse_flow)


def test_mutual_check_keeps_the_coarse_match_where_the_way_back_lands_elsewhere():
    """The source point (3, 3) has a twin at (2, 2); its refined match (2, 3) matches back to the twin, more
    than a pixel away, so with the mutual check the match stays coarse. Without a twin it moves."""
    from diffrep.correspond.dift.frames import prepare

    src = tgt = prepare(torch.zeros(3, 8, 8), 1, None)
    tgt_fine = torch.zeros(2, 8, 8)
    tgt_fine[0] = 1.0
    tgt_fine[1, 3, 2] = 5.0
    src_fine = torch.zeros(2, 8, 8)
    src_fine[1, 3, 3] = 5.0
    point, centre = torch.tensor([[3.0, 3.0]]), torch.tensor([[3.0, 3.0]])
    assert refine_matches(centre, point, src_fine, src, tgt_fine, tgt, 1, mutual=True).tolist() == [[2.0, 3.0]]
    src_fine[1, 2, 2] = 5.0
    assert refine_matches(centre, point, src_fine, src, tgt_fine, tgt, 1, mutual=False).tolist() == [[2.0, 3.0]]
    assert refine_matches(centre, point, src_fine, src, tgt_fine, tgt, 1, mutual=True).tolist() == [[3.0, 3.0]]


def test_coarse_weight_breaks_a_fine_tie_toward_the_coarse_peak():
    """Fine descriptors that cannot tell two target pixels apart (a repeated patch) send the hard argmax to
    the first; a coarse weight lets the coarse descriptor, which prefers the other, decide. Weight 0 is the
    fine descriptor alone, and a weight needs the coarse maps."""
    from diffrep.correspond.dift.frames import prepare

    src = tgt = prepare(torch.zeros(3, 8, 8), 1, None)
    fine = torch.zeros(2, 8, 8)
    fine[0] = 1.0
    fine[1, 3, 2] = fine[1, 3, 4] = 5.0          # pixels (2, 3) and (4, 3) look alike, and like the source point
    src_fine = torch.zeros(2, 8, 8)
    src_fine[1, 3, 3] = 5.0
    coarse_map = torch.zeros(2, 8, 8)
    coarse_map[0] = 1.0
    coarse_map[1, :, 4:] = 1.0                   # the coarse descriptor places the point on the right half
    src_coarse = torch.zeros(2, 8, 8)
    src_coarse[0], src_coarse[1, :, 3:] = 1.0, 1.0
    point, centre = torch.tensor([[3.0, 3.0]]), torch.tensor([[3.0, 3.0]])
    alone = refine_matches(centre, point, src_fine, src, fine, tgt, radius=1)
    assert alone.tolist() == [[2.0, 3.0]]
    assert torch.equal(refine_matches(centre, point, src_fine, src, fine, tgt, 1, coarse_maps=(src_coarse, coarse_map),
                                      coarse_weight=0.0), alone)
    blended = refine_matches(centre, point, src_fine, src, fine, tgt, 1, coarse_maps=(src_coarse, coarse_map),
                             coarse_weight=0.2)
    assert blended.tolist() == [[4.0, 3.0]]
    with pytest.raises(DiffrepError, match="a coarse weight of 0.2 needs the coarse descriptor maps"):
        refine_matches(centre, point, src_fine, src, fine, tgt, 1, coarse_weight=0.2)
    # the window peaks at 5/√26 ≈ 0.981: a match moves only where the minimum similarity allows it
    assert refine_matches(centre, point, src_fine, src, fine, tgt, 1, min_similarity=0.98).tolist() == [[2.0, 3.0]]
    assert refine_matches(centre, point, src_fine, src, fine, tgt, 1, min_similarity=0.99).tolist() == [[3.0, 3.0]]


def test_python_match_recovers_a_known_shift_wherever_the_window_reaches(unet_dir):
    """The target is the source photo crop moved by (−2, −3) px. Refined by raw 9×9 patches (an exact
    copy of each source patch is in the target), the hard argmax finds the true pixel for exactly the
    points whose coarse match lies within the window of it, and for no other."""
    from diffrep.data.photos import photo

    featurizer = Featurizer(load_backbone(str(unet_dir)))
    coarse_describer = DiffusionDescriber(featurizer, "mid_block", t=0, ensemble=1, scales=[1])
    image = photo("astronaut")
    source, target = image[:, 100:140, 150:190], image[:, 103:143, 152:192]
    points = (torch.rand(30, 2, generator=torch.Generator().manual_seed(0)) * 24 + 8).round()   # 9×9 patches inside
    truth = points - torch.tensor([2.0, 3.0])

    coarse, _, _ = match(coarse_describer, source, target, points)
    refine = refiner(coarse_describer, "pixels", radius=2)
    found, (src, tgt), _ = match(coarse_describer, source, target, points, refine=refine)
    assert torch.equal(found.coarse, coarse.points) and torch.equal(found.unrefined().points, coarse.points)
    reach = ((coarse.points - truth).abs().amax(1) <= 2)
    exact = (found.points - truth).norm(dim=1) < 1e-4
    assert torch.equal(exact, reach) and exact.sum() > 2 * ((coarse.points - truth).norm(dim=1) == 0).sum()

    fine = refiner(coarse_describer, "up_blocks.1", temperature=0.1)   # a block of the same model, loaded once
    assert fine.describer.featurizer is featurizer and fine.radius == 1 and fine.describer.t == 0 and fine.mutual
    assert fine.describer.scales == (1.0,) and fine.describer.ensemble == 1
    found, _, _ = match(coarse_describer, source, target, points, refine=fine)
    fs, ft = fine.maps([src.image, tgt.image])
    assert fs.shape == (4, 40, 40)   # up_blocks.1: stride 1 on the 40×40 crop
    expected = refine_matches(tgt.to_model(coarse.points), src.to_model(points), fs, src, ft, tgt, 1, 0.1, mutual=True)
    torch.testing.assert_close(found.points, tgt.to_input(expected))


def test_refiner_refuses_what_is_not_finer(unet_dir):
    featurizer = Featurizer(load_backbone(str(unet_dir)))
    up = DiffusionDescriber(featurizer, "up_blocks.0", t=0, ensemble=1, scales=[1])   # stride 1: nothing finer
    with pytest.raises(DiffrepError, match=r"--refine daisy is not finer than the coarse descriptor up_blocks.0 "
                                           r"\(cells of 1 and 1 px\); nothing here is finer"):
        refiner(up, "daisy")
    with pytest.raises(DiffrepError, match="needs a diffusion describer"):
        refiner(pixel_describer(), "up_blocks.1")
    assert temperature("hard") is None and temperature(" HARD ") is None and temperature("0.25") == 0.25
    with pytest.raises(DiffrepError, match="match-sweep scores coarse matches only"):
        run_match_sweep(MatchEvalConfig(model=str(unet_dir), refine="pixels"), "unused")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("extra, message", [
    (["--refine", "mid_block"], "--refine mid_block is not finer than the coarse descriptor mid_block (cells of 2 "
                                "and 2 px); finer: conv_in, up_blocks.0, up_blocks.1, conv_out, daisy, pixels"),
    (["--refine-radius", "3"], "--refine-radius needs --refine FINE (a finer block of the model, daisy or pixels)"),
    (["--refine-temperature", "0.1"], "--refine-temperature needs --refine FINE"),
    (["--refine-t", "5"], "--refine-t needs --refine FINE"),
    (["--refine", "pixels", "--refine-radius", "0"], "refinement radius must be an integer from 1 to 64, got 0"),
    (["--refine", "pixels", "--refine-radius", "65"], "refinement radius must be an integer from 1 to 64, got 65"),
    (["--refine", "pixels", "--refine-temperature", "0"], "soft-argmax temperature must be a positive number"),
    (["--refine", "pixels", "--refine-temperature", "-1"], "soft-argmax temperature must be a positive number"),
    (["--refine", "pixels", "--refine-temperature", "warm"], "invalid temperature (a positive number, or 'hard') "
                                                             "value: 'warm'"),
    (["--refine", "daisy", "--refine-t", "3"], "a noise level (--refine-t 3) is for a diffusion block; daisy has none"),
    (["--refine", "up_blocks.1", "--refine-t", "5000"], "--refine up_blocks.1: t=5000 is outside the schedule"),
    (["--refine", "up_blok"], "--refine up_blok: unknown block(s) up_blok"),
    (["--refine-coarse-weight", "0.5"], "--refine-coarse-weight needs --refine FINE"),
    (["--refine", "pixels", "--refine-coarse-weight", "1"], "the coarse weight of the refinement window must be a "
                                                            "number from 0 up to (not including) 1, got 1.0"),
    (["--refine", "pixels", "--refine-coarse-weight", "-0.1"], "the coarse weight of the refinement window must be"),
    (["--refine-min-similarity", "0.5"], "--refine-min-similarity needs --refine FINE"),
    (["--no-refine-mutual"], "--no-refine-mutual needs --refine FINE"),
    (["--refine", "pixels", "--refine-min-similarity", "1.5"], "the minimum similarity of a refined match must be a "
                                                               "cosine from -1 to 1, got 1.5"),
])
def test_match_eval_bad_refine_refused(unet_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "o"
    line = run_bad(["match-eval", "--model", str(unet_dir), "--pairs", "1", *TINY, "--out", str(out), *extra], capsys)
    assert message in line and not out.exists()


def test_match_bad_refine_and_sweep_without_refine(unet_dir, two_photos, tmp_path, capsys):
    out = tmp_path / "x.png"
    line = run_bad(["match", *map(str, two_photos), "--model", str(unet_dir), "--ensemble", "1", "--block",
                    "up_blocks.0", "--refine", "pixels", "--out", str(out)], capsys)
    assert "--refine pixels is not finer than the coarse descriptor up_blocks.0" in line and not out.exists()
    line = run_bad(["match-sweep", "--model", str(unet_dir), "--refine", "pixels"], capsys)
    assert "unrecognized arguments: --refine pixels" in line
