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
    settings = {"fine": "up_blocks.1", "t": 0, "cell": 1.0, "radius": 2, "window": 5, "temperature": 0.05,
                "argmax": "soft"}   # default t: the lightest; default radius: one mid_block cell
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
    assert "diffusion+refine (mid_block, t=0; refined by up_blocks.1 t=0, window 5×5, T=0.05)" in printed
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
                                "temperature": None, "argmax": "hard"}
    assert all(len(scores(r)) == 6 for r in result["methods"].values())


# ----------------------------------------------------------------------------- match and Python's match()


def test_match_command_records_refined_and_coarse_points(unet_dir, two_photos, tmp_path):
    args = ["match", *map(str, two_photos), "--points", "12,20;30,5;20,30", "--model", str(unet_dir),
            "--ensemble", "1"]
    assert main([*args, "--out", str(tmp_path / "c.png")]) == 0
    assert main([*args, "--refine", "up_blocks.1", "--refine-radius", "3", "--refine-temperature", "0.1",
                 "--out", str(tmp_path / "r.png")]) == 0
    plain, refined = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("c", "r"))
    assert plain["refine"] is None and "coarse" not in plain["matches"][0]
    assert refined["refine"] == {"fine": "up_blocks.1", "t": 0, "cell": 1.0, "radius": 3, "window": 7,
                                 "temperature": 0.1, "argmax": "soft"}
    for before, row in zip(plain["matches"], refined["matches"]):
        assert row["coarse"] == before["target"] and row["similarity"] == before["similarity"]
        assert all(abs(a - b) <= 3 for a, b in zip(row["target"], row["coarse"]))   # inside the window (no resize)
    assert any(row["target"] != row["coarse"] for row in refined["matches"])
    assert (tmp_path / "r.png").stat().st_size > 0


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
    assert fine.describer.featurizer is featurizer and fine.radius == 2 and fine.describer.t == 0
    assert fine.describer.scales == (1.0,) and fine.describer.ensemble == 1
    found, _, _ = match(coarse_describer, source, target, points, refine=fine)
    fs, ft = fine.maps([src.image, tgt.image])
    assert fs.shape == (4, 40, 40)   # up_blocks.1: stride 1 on the 40×40 crop
    expected = refine_matches(tgt.to_model(coarse.points), src.to_model(points), fs, src, ft, tgt, 2, 0.1)
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
