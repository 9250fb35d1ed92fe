"""Hyper-features: descriptors that join blocks and noise levels (`--t 0,50`, 'a@50+b@0'), the sweep's
join rows (JSON, table, heatmap) and bad joins refused in one line, on the tiny pixel UNet."""

from __future__ import annotations

import json

import pytest
import torch

from diffrep import DiffrepError, Featurizer, load_backbone
from diffrep.cli import main
from diffrep.correspond.dift import (DiffusionDescriber, MatchEvalConfig, concat_maps, parse_descriptor, predict,
                                     refiner)
from diffrep.features import Cell
from diffrep.metrics import ALPHAS, score_matches

from .test_bad_input import run_bad

TINY = ["--pairs", "2", "--size", "32", "--ensemble", "1", "--scales", "1", "--no-baselines",
        "--precision", "fp32"]   # fp32, as the Python calls the commands' scores are checked against


@pytest.fixture(scope="module")
def featurizer(unet_dir):
    return Featurizer(load_backbone(str(unet_dir)))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, 32, 32, generator=g) * 2 - 1 for _ in range(2)]


def describe(featurizer, images, blocks, t):
    describer = DiffusionDescriber(featurizer, blocks, t, ensemble=1, scales=[1])
    return describer, describer.describe(images)


# ----------------------------------------------------------------------------- the descriptor


def test_two_levels_of_one_block_are_two_unit_parts(featurizer, images):
    describer, maps = describe(featurizer, images, "up_blocks.0", [50, 0])
    assert describer.blocks == ["up_blocks.0"] and describer.t == [0, 50] and describer.ts == [0, 50]
    assert describer.parts["up_blocks.0"] == [Cell(0, "up_blocks.0"), Cell(50, "up_blocks.0")]
    joined = maps[0]["up_blocks.0"]
    assert joined.shape == (16, 32, 32)   # 8 channels at each level, the block's own 32² grid
    for part in (joined[:8], joined[8:]):
        torch.testing.assert_close(part.norm(dim=0), torch.ones(32, 32))
    assert not torch.allclose(joined[:8], joined[8:], atol=1e-3)   # the levels see different noise


def test_join_equals_the_parts_described_one_level_at_a_time_and_joined_by_hand(featurizer, images):
    one = {t: describe(featurizer, images, ["mid_block", "up_blocks.0"], t)[1] for t in (0, 50)}
    describer, maps = describe(featurizer, images, "up_blocks.0+mid_block", [0, 50])
    assert describer.blocks == ["mid_block+up_blocks.0"] and describer.settings()["t"] == [0, 50]
    for i in range(2):
        by_hand = concat_maps([one[0][i]["mid_block"], one[50][i]["mid_block"],
                               one[0][i]["up_blocks.0"], one[50][i]["up_blocks.0"]])
        assert maps[i]["mid_block+up_blocks.0"].shape == (8 + 8 + 8 + 8, 32, 32)
        torch.testing.assert_close(maps[i]["mid_block+up_blocks.0"], by_hand)
    # '@' spells the same join part by part (any order): one canonical name, the same map
    spelt, again = describe(featurizer, images, "up_blocks.0@50+mid_block@0,50+up_blocks.0@0", None)
    assert spelt.blocks == ["mid_block@0,50+up_blocks.0@0,50"] and spelt.t == [0, 50]
    torch.testing.assert_close(again[1]["mid_block@0,50+up_blocks.0@0,50"], maps[1]["mid_block+up_blocks.0"])
    # each block at its own level; a bare block at the describer's t
    mixed, m = describe(featurizer, images, "mid_block@50+up_blocks.0", 0)
    assert mixed.blocks == ["mid_block@50+up_blocks.0@0"] and mixed.t == [0, 50]
    assert mixed.cell("mid_block@50+up_blocks.0@0") == 1   # the finest part's stride (up_blocks.0)
    torch.testing.assert_close(m[0]["mid_block@50+up_blocks.0@0"],
                               concat_maps([one[50][0]["mid_block"], one[0][0]["up_blocks.0"]]))
    # a single level keeps today's descriptor exactly: the raw map, t a number
    single, s = describe(featurizer, images, "mid_block", 0)
    assert single.t == 0 and torch.equal(s[0]["mid_block"], one[0][0]["mid_block"])
    assert not torch.allclose(s[0]["mid_block"].norm(dim=0), torch.ones(16, 16))   # not normalised alone


def test_refine_takes_a_join_of_levels(featurizer):
    coarse = DiffusionDescriber(featurizer, "mid_block", 0, ensemble=1, scales=[1])
    fine = refiner(coarse, "up_blocks.0", t=[0, 50])
    assert fine.describer.parts["up_blocks.0"] == [Cell(0, "up_blocks.0"), Cell(50, "up_blocks.0")]
    assert (fine.settings()["t"], fine.settings()["cell"], fine.radius) == ([0, 50], 1, 1)   # half a 2 px cell
    assert refiner(coarse, "up_blocks.0@0,50").settings()["fine"] == "up_blocks.0@0,50"


# ----------------------------------------------------------------------------- match and match-eval


def test_match_eval_with_two_levels_records_both_and_scores_the_join(unet_dir, featurizer, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["match-eval", *TINY, "--t", "0,50", "--block", "mid_block+up_blocks.0", "--examples", "1",
                 "--model", str(unet_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "match-eval.json").read_text())
    config = json.loads((out / "config.json").read_text())
    row = result["methods"]["diffusion"]
    assert (result["block"], result["t"], row["t"], config["t"]) == ("mid_block+up_blocks.0", [0, 50], [0, 50], [0, 50])
    assert "diffusion (mid_block+up_blocks.0, t=0,50)" in printed and "t=0,50 ensemble 1" in printed
    # the same scores as the join described and matched by hand on the same pairs
    cfg = MatchEvalConfig(model=str(unet_dir), pairs=2, size=32)
    pairs, size, _ = cfg.load_pairs()
    describer = DiffusionDescriber(featurizer, "mid_block+up_blocks.0", [0, 50], ensemble=1, scales=[1])
    expected = score_matches(pairs, predict(describer, pairs, size)["mid_block+up_blocks.0"])
    assert [row[str(a)] for a in ALPHAS] == [expected[str(a)] for a in ALPHAS]
    assert row["median_epe"] == expected["median_epe"]


def test_match_records_levels_of_a_per_block_join(unet_dir, tmp_path):
    from .test_correspond import photo_crop, write_png

    src, tgt = write_png(tmp_path / "a.png", photo_crop(100, 150, 32, 32)), write_png(tmp_path / "b.png",
                                                                                     photo_crop(102, 152, 32, 32))
    out = tmp_path / "m.png"
    assert main(["match", str(src), str(tgt), "--model", str(unet_dir), "--ensemble", "1", "--scales", "1",
                 "--block", "mid_block@50+up_blocks.0@0", "--points", "10,10;20,5", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert (record["block"], record["t"], len(record["matches"])) == ("mid_block@50+up_blocks.0@0", [0, 50], 2)


# ----------------------------------------------------------------------------- the sweep's join rows


def test_sweep_join_rows_in_json_table_and_heatmap(unet_dir, featurizer, tmp_path, capsys, monkeypatch):
    import diffrep.plotting as plotting

    drawn, save = [], plotting.save_figure

    def keep_texts(fig, path, **kw):   # each axis's row labels and written values, then the real save
        drawn.append([[t.get_text() for t in [*ax.get_yticklabels(), *ax.texts]] for ax in fig.axes])
        return save(fig, path, **kw)

    monkeypatch.setattr(plotting, "save_figure", keep_texts)
    out = tmp_path / "sweep"
    assert main(["match-sweep", *TINY, "--t", "0,50,200", "--blocks", "mid_block,up_blocks.0,up_blocks.1",
                 "--joins", "best; mid_block@50+up_blocks.0@0", "--model", str(unet_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "match-sweep.json").read_text())
    cells = result["cells"]
    assert len(cells) == 9

    # 'best': the two best blocks at the two best levels, each ranked by its best cell
    def top(axis):
        best = {}
        for c in cells:
            best[c[axis]] = max(best.get(c[axis], -1), c["0.1"]["per_point"])
        return sorted(best, key=lambda k: -best[k])[:2]
    blocks = [b for b in result["blocks"] if b in top("block")]
    levels = ",".join(map(str, sorted(top("t"))))
    best = "+".join(f"{b}@{levels}" for b in blocks)
    joins = {r["join"]: r for r in result["joins"]}
    assert list(joins) == [best, "mid_block@50+up_blocks.0@0"]
    assert [r["best_rule"] for r in result["joins"]] == [True, False]
    assert joins["mid_block@50+up_blocks.0@0"]["parts"] == [{"t": 50, "block": "mid_block"},
                                                            {"t": 0, "block": "up_blocks.0"}]
    assert len(joins[best]["parts"]) == 4

    # every α and the median EPE, the very scores of the join matched by hand
    pairs, size, _ = MatchEvalConfig(model=str(unet_dir), pairs=2, size=32).load_pairs()
    describer = DiffusionDescriber(featurizer, "mid_block@50+up_blocks.0@0", ensemble=1, scales=[1])
    expected = score_matches(pairs, predict(describer, pairs, size)["mid_block@50+up_blocks.0@0"])
    row = joins["mid_block@50+up_blocks.0@0"]
    assert [row[str(a)] for a in ALPHAS] == [expected[str(a)] for a in ALPHAS]
    assert row["median_epe"] == expected["median_epe"]

    # the choice is the best of cells and joins
    every = [(c["0.1"]["per_point"], c["block"]) for c in cells] + [(r["0.1"]["per_point"], r["join"])
                                                                      for r in result["joins"]]
    assert result["chosen"]["0.1"]["per_point"] == max(v for v, _ in every)
    assert result["chosen"]["block"] in {name for v, name in every if v == max(every)[0]}

    # the table lists each join with its scores, the picture shows each join under the grid
    scores = " / ".join(f"{row[str(a)]['per_point']:.1f}" for a in ALPHAS)
    assert f"  mid_block@50+up_blocks.0@0: PCK@0.01/0.02/0.05/0.1/0.15 {scores}" in printed
    assert f"  {best} (best): " in printed and f"chosen: --block {result['chosen']['block']}" in printed
    (texts,) = drawn
    strip = next(t for t in texts if best in t)
    assert "mid_block@50+up_blocks.0@0" in strip
    assert f"{joins[best]['0.1']['per_point']:.1f}" in strip and f"{row['0.1']['per_point']:.1f}" in strip
    assert (out / "heatmap.png").stat().st_size > 0


def test_sweep_without_joins_and_with_one_cell(unet_dir, tmp_path):
    out = tmp_path / "none"
    assert main(["match-sweep", *TINY, "--t", "0", "--blocks", "mid_block", "--model", str(unet_dir),
                 "--out", str(out)]) == 0   # 'best' of a single cell: nothing to join
    result = json.loads((out / "match-sweep.json").read_text())
    assert result["joins"] == [] and result["chosen"]["flags"] == "--block mid_block --t 0"
    out = tmp_path / "off"
    assert main(["match-sweep", *TINY, "--t", "0,50", "--blocks", "mid_block", "--joins", "none",
                 "--model", str(unet_dir), "--out", str(out)]) == 0
    assert json.loads((out / "match-sweep.json").read_text())["joins"] == []


# ----------------------------------------------------------------------------- bad input


def test_parse_descriptor():
    assert parse_descriptor("a@0,50 + b") == [("a", [0, 50]), ("b", None)]
    assert parse_descriptor("a@0.5") == [("a", [0.5])]
    for bad in ("a++b", "+a", "a+", "a@", "a@0,,50", "@0"):
        with pytest.raises(DiffrepError, match="has an empty part"):
            parse_descriptor(bad)
    with pytest.raises(DiffrepError, match="noise level 'x' is not a number"):
        parse_descriptor("a@0,x")


@pytest.mark.parametrize("block, t, message", [
    ("mid_block@5000", None, "descriptor 'mid_block@5000': t=5000 is outside the schedule"),
    ("mid_block", [0, 5000], "t=5000 is outside the schedule"),
    ("mid_block+mid_block", 0, "names mid_block at t=0 twice"),
    ("mid_block@0+mid_block", 0, "names mid_block at t=0 twice"),
    ("mid_block@0,0", None, "descriptor 'mid_block@0,0': noise level t=0 given twice"),
    ("mid_block", [50, 50], "noise level t=50 given twice"),
    ("mid_block++up_blocks.0", 0, "has an empty part"),
])
def test_bad_descriptors_refused(featurizer, block, t, message):
    with pytest.raises(DiffrepError, match=message.replace("(", r"\(")):
        DiffusionDescriber(featurizer, block, t, ensemble=1)


@pytest.mark.parametrize("args, message", [
    (["match-eval", "--t", "0,5000"], "t=5000 is outside the schedule"),
    (["match-eval", "--block", "mid_block@0+up_blocks.0@"], "'mid_block@0+up_blocks.0@' has an empty part"),
    (["match-eval", "--block", "mid_block+mid_block@0"], "names mid_block at t=0 twice"),
    (["match-eval", "--t", "0,0"], "noise level t=0 given twice"),
    (["match-sweep", "--joins", "mid_block+up_blocks.0@0"], "give mid_block its noise levels"),
    (["match-sweep", "--joins", "mid_block@0"], "is one (block, t) map, a cell of the grid"),
    (["match-sweep", "--joins", " ; "], "holds no join"),
    (["match-sweep", "--joins", "mid_blok@0+up_blocks.0@0"], "unknown block(s) mid_blok"),
    (["match-sweep", "--joins", "mid_block@0+up_blocks.0@0,999999"], "t=999999 is outside the schedule"),
])
def test_bad_joins_refused_in_one_line(unet_dir, tmp_path, capsys, args, message):
    out = tmp_path / "o"
    line = run_bad([*args, *TINY, "--model", str(unet_dir), "--out", str(out)], capsys)
    assert message in line and not out.exists()
