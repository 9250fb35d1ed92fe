"""DIFT correspondence: PCK arithmetic, exact recovery of a known warp, the SPair-71k reader, chunked
similarity, the three commands end to end on tiny models, and each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffrep.cli import main
from diffrep import DiffrepError, Featurizer, load_backbone
from diffrep.correspond.dift import Matches, check_points, dense_flow, match, match_maps, nearest, pixel_grid, prepare
from diffrep.data import Pair, spair_pairs, warp_pair
from diffrep.features import sample_at
from diffrep.metrics import ALPHAS, correct_matches, pck, score_matches
from diffrep.correspond.dift.cli import parse_points

# ----------------------------------------------------------------------------- fixtures


class CodeDescriber:
    """An 'identity-like' describer: the image itself is the feature map (give it a unique code per
    pixel), at a chosen stride so that padding is exercised."""

    fixed_size = None
    blocks = ["code"]

    def __init__(self, stride: int = 1):
        self.stride = stride

    def describe(self, images, prompt=None):
        return [{"code": im} for im in images]


def write_png(path: Path, image: torch.Tensor) -> Path:
    arr = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)
    return path


def photo_crop(y: int, x: int, h: int, w: int) -> torch.Tensor:
    from diffrep.data.photos import photo

    return photo("astronaut")[:, y:y + h, x:x + w]


SPAIR_PAIRS = [  # (category, src, trg, src_kps, trg_kps, trg_bndbox)
    ("cat", "a.jpg", "b.jpg", [[5, 6], [20, 10], [30, 25]], [[7, 8], [22, 12], [31, 26]], [2, 3, 32, 23]),
    ("dog", "c.jpg", "d.jpg", [[10, 10], [3, 4]], [[12, 9], [5, 5]], [0, 0, 20, 28]),
]


@pytest.fixture
def spair_dir(tmp_path) -> Path:
    """A tiny SPair-71k in its exact layout: PairAnnotation/test/*.json, JPEGImages/<category>/*.jpg."""
    root = tmp_path / "SPair-71k"
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    (root / "PairAnnotation" / "trn").mkdir(parents=True)
    for i, (cat, src, trg, skp, tkp, box) in enumerate(SPAIR_PAIRS):
        (root / "JPEGImages" / cat).mkdir(parents=True, exist_ok=True)
        for j, name in enumerate((src, trg)):
            img = ((photo_crop(40 * i + 10 * j, 200, 30, 40) + 1) * 127.5).byte().permute(1, 2, 0).numpy()
            Image.fromarray(img).save(root / "JPEGImages" / cat / name)
        ann = {"src_imname": src, "trg_imname": trg, "src_kps": skp, "trg_kps": tkp, "trg_bndbox": box,
               "src_bndbox": [0, 0, 39, 29], "category": cat, "mirror": 0, "viewpoint_variation": 0}
        (root / "PairAnnotation" / "test" / f"{i:06d}-{src[0]}-{trg[0]}:{cat}.json").write_text(json.dumps(ann))
    return root


# ----------------------------------------------------------------------------- PCK arithmetic


def test_pck_hand_made():
    truth = torch.tensor([[10.0, 10.0], [50.0, 50.0], [0.0, 0.0], [20.0, 0.0]])
    pred = truth + torch.tensor([[3.0, 4.0], [0.0, 5.01], [10.0, 0.0], [0.0, 0.0]])  # errors 5, 5.01, 10, 0
    hit = correct_matches(pred, truth, threshold_size=50, alpha=0.1)  # 5 px: inclusive boundary
    assert hit.tolist() == [True, False, False, True]
    assert correct_matches(pred, truth, 50, 0.2).tolist() == [True, True, True, True]
    # per point pools all points (3 of 5 = 60%); per image averages pairs (2/4 and 1/1 -> 75%)
    assert pck([hit, torch.tensor([True])]) == {"per_point": 60.0, "per_image": 75.0}


def test_pck_uses_target_bbox(spair_dir):
    pairs = spair_pairs(spair_dir, "test")
    assert [p.threshold_size for p in pairs] == [30.0, 28.0]  # max(box width 30, height 20); max(20, 28)
    assert ALPHAS == (0.01, 0.02, 0.05, 0.1, 0.15)
    # errors: cat 0.25, 1, 4 px against α·30 = 0.3, 0.6, 1.5, 3, 4.5 px;
    #         dog 0.5, 2.5 px against α·28 = 0.28, 0.56, 1.4, 2.8, 4.2 px
    off = [torch.tensor([[0.15, 0.2], [0.6, 0.8], [0.0, 4.0]]), torch.tensor([[0.3, 0.4], [1.5, 2.0]])]
    result = score_matches(pairs, [Matches(p.target_points + o, torch.ones(len(o))) for p, o in zip(pairs, off)])
    # hits per α: cat 1, 1, 2, 2, 3 of 3; dog 0, 1, 1, 2, 2 of 2
    assert [result[str(a)]["per_point"] for a in ALPHAS] == [20.0, 40.0, 60.0, 80.0, 100.0]
    assert [result[str(a)]["per_image"] for a in ALPHAS] == [16.67, 41.67, 58.33, 83.33, 100.0]
    # median of 0.25, 0.5, 1, 2.5, 4; per image: median of the pairs' medians 1 and (0.5 + 2.5) / 2
    assert result["median_epe"] == {"per_point": 1.0, "per_image": 1.25}


def test_mutual_rejections_count_as_misses():
    pair = Pair("p", torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), torch.zeros(2, 2), torch.zeros(2, 2), 8.0)
    result = score_matches([pair], [Matches(torch.zeros(2, 2), torch.ones(2), torch.tensor([True, False]))])
    assert result["0.1"]["per_point"] == 50.0 and result["mutual_fraction"] == 50.0


# ----------------------------------------------------------------------------- geometry and matching


def test_sample_at_is_bilinear_upsampling():
    feat = torch.randn(5, 4, 6)
    up = F.interpolate(feat[None], size=(16, 24), mode="bilinear", align_corners=False)[0]
    sampled = sample_at(feat, pixel_grid((16, 24)), (16, 24))
    assert torch.allclose(sampled.T.reshape(5, 16, 24), up, atol=1e-5)


def test_known_warp_recovered_exactly_with_padding():
    """A unique random code per pixel; the target is the source mirrored and transposed (a known
    permutation of pixels). Odd sizes force padding to the stride; padded pixels are never matched."""
    source = torch.randn(16, 30, 22, generator=torch.Generator().manual_seed(0))
    target = source.flip(-1).transpose(1, 2)  # target[row a, col b] = source[row b, col 21 - a]
    points = torch.tensor([[0.0, 0.0], [21.0, 29.0], [5.0, 17.0], [13.0, 2.0]])
    truth = torch.stack([points[:, 1], 21 - points[:, 0]], 1)  # source (x, y) -> target (y, 21 - x)
    found, (src, tgt), _ = match(CodeDescriber(stride=4), source, target, points)
    assert src.padded_hw == (32, 24) and tgt.padded_hw == (24, 32) and tgt.hw == (22, 30)
    assert torch.equal(found.points, truth) and torch.allclose(found.similarity, torch.ones(4))
    chunked = match_maps(src.image, src, tgt.image, tgt, points, chunk=50)
    assert torch.equal(chunked.points, truth)


def test_resize_maps_coordinates_back_exactly():
    prep = prepare(torch.zeros(3, 30, 22), stride=8, size=44)
    assert prep.hw == (44, 44) and prep.padded_hw == (48, 48) and prep.scale == (2.0, 44 / 30)
    xy = torch.tensor([[0.0, 0.0], [21.0, 29.0], [7.25, 3.5]])
    assert prep.to_model(xy)[0].tolist() == pytest.approx([0.5, 0.5 * 44 / 30 - 0.5])  # pixel centre to centre
    assert torch.allclose(prep.to_input(prep.to_model(xy)), xy, atol=1e-5)


def test_chunked_similarity_equals_unchunked():
    gen = torch.Generator().manual_seed(1)
    feat_s, feat_t = torch.randn(8, 5, 7, generator=gen), torch.randn(8, 6, 5, generator=gen)
    queries = sample_at(feat_s, torch.rand(37, 2, generator=gen) * 20, (20, 28))
    grid = pixel_grid((24, 20))
    whole = nearest(queries, feat_t, grid, (24, 20), chunk=10**6)
    for chunk in (1, 7, 64):
        part = nearest(queries, feat_t, grid, (24, 20), chunk=chunk)
        assert torch.equal(part[0], whole[0]) and torch.allclose(part[1], whole[1])
    src, tgt = prepare(torch.zeros(8, 20, 28), 4), prepare(torch.zeros(8, 24, 20), 4)
    flow_a, sim_a = dense_flow(feat_s, src, feat_t, tgt, chunk=33)
    flow_b, sim_b = dense_flow(feat_s, src, feat_t, tgt, chunk=10**6)
    assert flow_a.shape == (20, 28, 2) and torch.equal(flow_a, flow_b) and torch.allclose(sim_a, sim_b)


def test_combined_blocks_descriptor(unet_dir):
    from diffrep.correspond.dift import DiffusionDescriber

    featurizer = Featurizer(load_backbone(str(unet_dir)))
    describer = DiffusionDescriber(featurizer, ["up_blocks.0+mid_block", "mid_block"], t=10, ensemble=1, scales=[1])
    assert describer.blocks == ["mid_block+up_blocks.0", "mid_block"] and describer.taps == ["mid_block", "up_blocks.0"]
    (maps,) = describer.describe([torch.zeros(1, 32, 32)])
    assert maps["mid_block+up_blocks.0"].shape == (16, 32, 32) and maps["mid_block"].shape == (8, 16, 16)
    # each part is unit length per pixel, so the concatenation has norm √2 where no resize blends cells
    assert torch.allclose(maps["mid_block+up_blocks.0"][8:].norm(dim=0), torch.ones(32, 32), atol=1e-5)
    assert DiffusionDescriber(featurizer).blocks == ["mid_block"]  # the default for pixel UNets


def test_multi_scale_descriptor(unet_dir, latent_unet_dir, dit_dir):
    """Scales join the features of the resized image: each scale unit length, on the finest grid."""
    from diffrep.correspond.dift import DiffusionDescriber

    featurizer = Featurizer(load_backbone(str(unet_dir)))
    image = torch.rand(3, 32, 32) * 2 - 1
    one = DiffusionDescriber(featurizer, "mid_block", t=10, ensemble=1, scales=[1]).describe([image])[0]["mid_block"]
    two = DiffusionDescriber(featurizer, "mid_block", t=10, ensemble=1, scales=[1, 0.5]).describe([image])[0]["mid_block"]
    assert one.shape == (8, 16, 16) and two.shape == (16, 16, 16)
    torch.testing.assert_close(two[:8], F.normalize(one, dim=0))
    half = DiffusionDescriber(featurizer, "mid_block", t=10, ensemble=1, scales=[1]).describe(
        [F.interpolate(image[None], size=(16, 16), mode="bilinear", antialias=True, align_corners=False)[0]])[0]
    torch.testing.assert_close(two[8:], F.interpolate(F.normalize(half["mid_block"], dim=0)[None], size=(16, 16),
                                                      mode="bilinear", align_corners=False)[0])
    assert DiffusionDescriber(featurizer).scales == (1.0, 0.5, 0.25, 0.125)   # pixel UNets
    assert DiffusionDescriber(Featurizer(load_backbone(str(latent_unet_dir)))).scales == (1.0,)
    with pytest.raises(DiffrepError, match="scales must lie"):
        DiffusionDescriber(Featurizer(load_backbone(str(dit_dir))), scales=[1, 0.5])
    with pytest.raises(DiffrepError, match="scales must lie"):
        DiffusionDescriber(featurizer, scales=[0])


def test_default_noise_level_follows_the_model_family_not_the_block(unet_dir, latent_unet_dir, dit_dir):
    """Latent VP models: DIFT's t = 261 at any block or join (it once fell to 0 off the default block);
    pixel UNets: t = 0; EDM: σ_min. The ensemble is DIFT's 8 unless given."""
    from diffrep.correspond.dift import DiffusionDescriber

    latent, pixel = (Featurizer(load_backbone(str(d))) for d in (latent_unet_dir, unet_dir))
    for blocks in (None, "up_blocks.0", "mid_block+up_blocks.0"):
        assert DiffusionDescriber(latent, blocks).t == 261 and DiffusionDescriber(pixel, blocks).t == 0
    dit = Featurizer(load_backbone(str(dit_dir)))
    assert DiffusionDescriber(dit).t == dit.backbone.noise.sigma_min
    assert DiffusionDescriber(pixel).ensemble == 8 and DiffusionDescriber(pixel, ensemble=1).ensemble == 1


def test_mutual_check():
    code = torch.randn(8, 12, 12, generator=torch.Generator().manual_seed(2))
    target = code.clone()
    target[:, :, 6:] = code[:, :, :6]  # right half of the target repeats the left: those are not mutual
    prep = prepare(code, 1)
    found = match_maps(code, prep, target, prepare(target, 1), torch.tensor([[2.0, 3.0], [9.0, 3.0]]), mutual=True)
    assert found.mutual.tolist() == [True, False]


def test_warps_ground_truth_is_consistent():
    """Source and target pixel values at the true keypoints agree (up to the photometric jitter)."""
    pair = warp_pair(3, size=64)
    assert len(pair.source_points) == 20 and pair.threshold_size == 64
    for pts, hw in ((pair.source_points, 64), (pair.target_points, 64)):
        assert ((pts >= 0) & (pts <= hw - 1)).all()
    a = sample_at(pair.source, pair.source_points, (64, 64)).flatten()
    b = sample_at(pair.target, pair.target_points, (64, 64)).flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9
    assert torch.equal(warp_pair(3, size=64).target, pair.target)  # fixed by the seed


# ----------------------------------------------------------------------------- SPair reader


def test_spair_reader(spair_dir):
    pairs = spair_pairs(spair_dir, "test")
    assert [p.category for p in pairs] == ["cat", "dog"]
    assert pairs[0].source == spair_dir / "JPEGImages" / "cat" / "a.jpg"
    assert pairs[1].target_points.tolist() == [[12.0, 9.0], [5.0, 5.0]]
    src, tgt = pairs[0].images()
    assert src.shape == (3, 30, 40) and -1 <= src.min() and tgt.max() <= 1
    assert len(spair_pairs(spair_dir, "test", limit=1)) == 1


def test_spair_bad_folders(spair_dir, tmp_path):
    with pytest.raises(DiffrepError, match="not an SPair-71k folder"):
        spair_pairs(tmp_path / "nowhere")
    with pytest.raises(DiffrepError, match="split 'val' not found.*splits there: test, trn"):
        spair_pairs(spair_dir, "val")
    with pytest.raises(DiffrepError, match="holds no"):
        spair_pairs(spair_dir, "trn")
    (spair_dir / "JPEGImages" / "dog" / "d.jpg").unlink()
    with pytest.raises(DiffrepError, match="1 image.* missing.*d.jpg"):
        spair_pairs(spair_dir, "test")
    ann = next((spair_dir / "PairAnnotation" / "test").glob("*cat.json"))
    ann.write_text(json.dumps({"src_imname": "a.jpg"}))
    with pytest.raises(DiffrepError, match="lacks trg_imname, src_kps"):
        spair_pairs(spair_dir, "test")


# ----------------------------------------------------------------------------- command line


@pytest.fixture
def two_photos(tmp_path) -> tuple[Path, Path]:
    """Two overlapping crops of a real photograph, sizes not divisible by any stride."""
    return (write_png(tmp_path / "src.png", photo_crop(100, 150, 38, 45)),
            write_png(tmp_path / "tgt.png", photo_crop(104, 155, 41, 43)))


def test_match_command(unet_dir, two_photos, tmp_path, capsys):
    out = tmp_path / "m" / "match.png"
    out.parent.mkdir()
    args = ["match", *map(str, two_photos), "--points", "12,20; 30,5;0,0", "--model", str(unet_dir),
            "--ensemble", "2", "--block", "up_blocks.0", "--mutual", "--flow", "--out", str(out)]
    assert main(args) == 0
    assert "similarity" in capsys.readouterr().out
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["block"] == "up_blocks.0" and len(record["matches"]) == 3
    assert (record["t"], record["ensemble"], record["reference"]) == (0, 2, None)   # what was used, recorded
    for row in record["matches"]:
        x, y = row["target"]
        assert 0 <= x <= 42 and 0 <= y <= 40 and -1 <= row["similarity"] <= 1 and "mutual" in row
    assert out.stat().st_size > 0 and (out.parent / "match-features.png").stat().st_size > 0
    flow = np.load(out.parent / "match-flow.npz")
    assert flow["target_xy"].shape == (38, 45, 2)


def test_match_command_latent_model_with_category(latent_unet_dir, two_photos, tmp_path):
    out = tmp_path / "cat.png"
    assert main(["match", *map(str, two_photos), "--model", str(latent_unet_dir), "--category", "cat",
                 "--ensemble", "1", "--size", "32", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["prompt"] == "a photo of a cat" and len(record["matches"]) == 16  # default 4×4 grid


def test_match_eval_warps_and_spair(unet_dir, spair_dir, tmp_path, capsys):
    out = tmp_path / "corr"
    assert main(["match-eval", "--benchmark", "warps", "--pairs", "3", "--size", "32", "--ensemble", "1",
                 "--model", str(unet_dir), "--examples", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "match-eval.json").read_text())
    assert set(result["methods"]) == {"diffusion", "pixels", "daisy"} and result["n_pairs"] == 3
    assert len(result["methods"]["diffusion"]["pck@0.1_per_pair"]) == 3
    assert (result["t"], result["ensemble"], result["scales"], result["reference"]) == (0, 1, [1, 0.5, 0.25, 0.125], None)
    assert result["alphas"] == [0.01, 0.02, 0.05, 0.1, 0.15]
    for r in result["methods"].values():
        pcks = [r[str(a)]["per_point"] for a in ALPHAS]
        assert all(0 <= v <= 100 for v in pcks) and pcks == sorted(pcks)   # a looser α never scores less
        assert r["median_epe"]["per_point"] >= 0 and r["median_epe"]["per_image"] >= 0
    assert "daisy" in printed and "pixels" in printed and "diffusion (mid_block, t=0)" in printed
    assert "@0.01" in printed and "median EPE" in printed
    assert len(list(out.glob("example-*.png"))) == 2 and len(list(out.glob("features-*.png"))) == 1

    out = tmp_path / "spair"
    assert main(["match-eval", "--spair", str(spair_dir), "--split", "test", "--model", str(unet_dir),
                 "--ensemble", "1", "--no-baselines", "--out", str(out)]) == 0
    result = json.loads((out / "match-eval.json").read_text())
    assert result["benchmark"] == "spair" and result["n_points"] == 5 and "bounding box" in result["threshold"]
    assert set(result["methods"]) == {"diffusion"}


def test_match_sweep(unet_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["match-sweep", "--pairs", "2", "--size", "32", "--ensemble", "1", "--t", "10,200",
                 "--blocks", "mid_block,up_blocks.0", "--model", str(unet_dir), "--out", str(out)]) == 0
    result = json.loads((out / "match-sweep.json").read_text())
    assert [(c["t"], c["block"]) for c in result["cells"]] == [
        (10, "mid_block"), (10, "up_blocks.0"), (200, "mid_block"), (200, "up_blocks.0")]
    assert set(result["baselines"]) == {"pixels", "daisy"} and (out / "heatmap.png").stat().st_size > 0
    assert result["ensemble"] == 1 and result["reference"] is None
    assert all(set(map(str, ALPHAS)) | {"median_epe"} <= set(c) for c in result["cells"])
    printed = capsys.readouterr().out
    assert "best: t=" in printed and "median EPE per point (pixels), t × block" in printed and "PCK@0.01/" in printed


# ----------------------------------------------------------------------------- bad input


def test_parse_points():
    assert parse_points("12,40;55.5,31;").tolist() == [[12.0, 40.0], [55.5, 31.0]]
    for bad in ("12,40;55", "a,b", "1,2,3", ";"):
        with pytest.raises(DiffrepError):
            parse_points(bad)


def test_points_outside_image():
    with pytest.raises(DiffrepError, match=r"outside the 8×6 image.*\(8, 1\)"):
        check_points(torch.tensor([[1.0, 1.0], [8.0, 1.0]]), (6, 8))


@pytest.mark.parametrize("points, message", [
    ("100,3", "source points outside the 45×38 image"),
    ("12,40;55", "malformed point '55'"),
    ("3;4", "malformed point '3'"),
])
def test_match_bad_points(unet_dir, two_photos, tmp_path, capsys, points, message):
    code = main(["match", *map(str, two_photos), "--points", points, "--model", str(unet_dir), "--ensemble", "1",
                 "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_match_unreadable_images(unet_dir, two_photos, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    for source in (broken, tmp_path / "absent.png"):
        code = main(["match", str(source), str(two_photos[1]), "--model", str(unet_dir),
                     "--out", str(tmp_path / "x.png")])
        err = capsys.readouterr().err
        assert code == 2 and "cannot read image" in err and source.name in err


def test_match_eval_bad_spair_and_model(unet_dir, spair_dir, tmp_path, capsys):
    (spair_dir / "JPEGImages" / "cat" / "a.jpg").unlink()
    assert main(["match-eval", "--spair", str(spair_dir), "--model", str(unet_dir), "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["match-eval", "--benchmark", "spair", "--model", str(unet_dir)]) == 2
    assert "needs the SPair-71k folder" in capsys.readouterr().err
    assert main(["match-eval", "--pairs", "1", "--size", "32", "--model", str(unet_dir), "--block", "up_blok",
                 "--out", str(tmp_path / "o")]) == 2
    assert "unknown block(s) up_blok" in capsys.readouterr().err
