"""DDPM-Seg on tiny models: pixel features, the vote, the uncertainty formula, the bounded-memory
path, --select, the command line end to end, and each kind of bad segmentation folder."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffrep import DiffrepError
from diffrep.cli import main
from diffrep.core import Featurizer, load_backbone
from diffrep.data import ImageSet, load_seg_data, read_mask
from diffrep.features import PEAK, Cell, DiffusionFeatures, RawPixels, features_at, upsample_concat
from diffrep.heads import PixelMLPs, ensemble_uncertainty, majority_vote
from diffrep.segment.ddpm_seg import SegConfig, default_levels, predict_image, train_segmenter

from .conftest import CLASSES, SIZE, write_folder

FAST = ["--k", "2", "--max-epochs", "2", "--pixels-per-image", "200", "--batch-size", "64", "--extract-batch", "4"]


@pytest.fixture(scope="module")
def seg_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("segdata")
    write_folder(root / "train", 6, "train")
    write_folder(root / "test", 4, "test")
    return root


# ----------------------------------------------------------------------------- features

def test_pixel_features_are_upsampled_maps_concatenated(rgb_unet_dir):
    featurizer = Featurizer(load_backbone(rgb_unet_dir))
    assert featurizer.default_blocks("segment") == ["mid_block", "up_blocks.0"]
    assert default_levels(featurizer.backbone.noise) == [50, 150, 250]
    source = DiffusionFeatures(featurizer, ["mid_block", "up_blocks.1"], [50, 250], shared_noise=True)
    images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    maps = source.maps(images)
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        Cell(50, "mid_block"): (2, 8, 16, 16), Cell(50, "up_blocks.1"): (2, 4, 32, 32),
        Cell(250, "mid_block"): (2, 8, 16, 16), Cell(250, "up_blocks.1"): (2, 4, 32, 32)}
    one = {k: v[1] for k, v in maps.items()}
    full = upsample_concat(one, (SIZE, SIZE))
    assert full.shape == (24, SIZE, SIZE) == (sum(source.channels.values()), SIZE, SIZE)
    index = torch.tensor([0, 5, 33, SIZE * SIZE - 1])
    assert torch.allclose(features_at(one, index, (SIZE, SIZE)), full.flatten(1)[:, index].T, atol=1e-5)
    # one fixed noise: an image's features do not depend on its batch
    alone = source.maps(images[1:])
    assert all(torch.allclose(alone[k][0], one[k], atol=1e-5) for k in one)


def test_raw_pixel_features_hold_neighbourhood_and_position():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    maps = RawPixels(radius=1).maps(images)["pixels"]
    assert maps.shape == (2, 3 * 9 + 2, 4, 4)
    assert torch.equal(maps[0, 4, 1, 2], images[0, 0, 1, 2])            # the centre of the 3×3 window
    assert maps[0, -2:, 0, 0].tolist() == [-1, -1] and maps[0, -2:, 3, 3].tolist() == [1, 1]


# ----------------------------------------------------------------------------- head

def test_majority_vote_counts_heads_and_breaks_ties_by_mean_probability():
    logits = torch.tensor([[[5.0, 0, 0], [0, 5, 0], [0, 0, 9]],
                           [[4.0, 0, 0], [0, 0, 5], [0, 9, 0]],
                           [[0.0, 6, 0], [9, 0, 0], [0, 0, 1]]])   # K=3 heads × 3 pixels × 3 classes
    # pixel 0: two heads say 0; pixel 1: one vote each, head 2 most confident -> 0; pixel 2: 2 votes for 2
    assert majority_vote(logits).tolist() == [0, 0, 2]


def test_uncertainty_is_entropy_of_mean_minus_mean_entropy():
    def logits_of(*rows):
        return torch.tensor(rows).log().unsqueeze(1)   # K×1×classes

    assert ensemble_uncertainty(logits_of([0.5, 0.5], [0.5, 0.5])).item() == pytest.approx(0, abs=1e-6)
    assert ensemble_uncertainty(logits_of([1.0, 0.0], [0.0, 1.0])).item() == pytest.approx(math.log(2), abs=1e-6)
    # by hand: mean (0.6, 0.4) has entropy 0.6730; the heads' entropies 0.5004 and 0.6730 average 0.5867
    h = lambda *p: -sum(x * math.log(x) for x in p)
    expected = h(0.6, 0.4) - (h(0.8, 0.2) + h(0.4, 0.6)) / 2
    assert expected == pytest.approx(0.0863, abs=1e-4)
    assert ensemble_uncertainty(logits_of([0.8, 0.2], [0.4, 0.6])).item() == pytest.approx(expected, abs=1e-5)


def test_stacked_heads_equal_independent_mlps():
    heads = PixelMLPs(channels=6, n_classes=4, k=3, seed=1).eval()
    x = torch.randn(5, 6)
    for k in range(3):
        mlp = torch.nn.Sequential(torch.nn.Linear(6, 128), torch.nn.ReLU(), torch.nn.BatchNorm1d(128),
                                  torch.nn.Linear(128, 32), torch.nn.ReLU(), torch.nn.BatchNorm1d(32),
                                  torch.nn.Linear(32, 4)).eval()
        for (lin, bn), i in zip([(0, 2), (3, 5)], range(2)):
            mlp[lin].weight.data, mlp[lin].bias.data = getattr(heads, f"w{i}")[k].T, getattr(heads, f"b{i}")[k, 0]
            mlp[bn].weight.data = getattr(heads, f"bn{i}_weight")[k]
        mlp[6].weight.data, mlp[6].bias.data = heads.w2[k].T, heads.b2[k, 0]
        assert torch.allclose(heads(x)[k], mlp(x), atol=1e-5)
    assert PixelMLPs(6, 30, k=1).hidden == (256, 128)


# ----------------------------------------------------------------------------- bounded memory

def test_training_and_prediction_never_hold_all_features(rgb_unet_dir, tmp_path, capsys):
    data = load_seg_data("scenes", "train", 4)
    cfg = SegConfig(model=str(rgb_unet_dir), labelled=4, k=2, max_epochs=2, pixels_per_image=500, batch_size=32,
                    pool_mb=0.05, baselines=False, extract_batch=2)
    PEAK.peak.clear()
    result = train_segmenter(cfg, tmp_path / "run", data)
    channels = result["heads"]["diffusion"]["channels"]            # 3 t × (8 + 8) channels
    all_in_ram = 4 * channels * 64 * 64 * 4
    assert result["all_in_ram_mb"] == pytest.approx(all_in_ram / 2**20, abs=0.1)
    assert "keep the pool within 0.05 MB" in capsys.readouterr().out
    assert PEAK.peak["training pool"] <= 0.05 * 2**20                 # the cap holds
    one_image = 3 * sum(c * (64 // s) ** 2 * 2 for c, s in [(8, 2), (8, 1)])   # float16 maps at own resolution
    assert PEAK.peak["cached image"] == one_image                     # one image read at a time
    assert PEAK.peak["extracted batch"] <= all_in_ram / 2             # extraction: one batch of 2 of 4 images
    assert len(list((tmp_path / "run" / "cache" / "train-diffusion").glob("*.safetensors"))) == 4

    from diffrep.segment.ddpm_seg import Segmenter

    PEAK.peak.clear()
    seg = Segmenter(tmp_path / "run")
    heads, keys = seg.heads["diffusion"]
    maps = seg.sources["diffusion"].maps(data.images[:1])
    labels, uncertainty = predict_image(heads, {k: maps[k][0] for k in keys}, (64, 64), tile=512)
    assert labels.shape == uncertainty.shape == (64, 64) and (uncertainty >= 0).all()
    assert PEAK.peak["pixel features"] == 512 * channels * 4           # one tile of pixel features


# ----------------------------------------------------------------------------- command line

def test_cli_train_predict_eval_on_a_folder(rgb_unet_dir, seg_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["segment", "train", "--model", str(rgb_unet_dir), "--data", str(seg_folder), "--labelled", "5",
                 "--out", str(run), "--t", "50,150", *FAST]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == CLASSES and config["ignore_index"] == 255 and config["ts"] == [50, 150]
    assert {p.name for p in run.glob("heads-*.safetensors")} == {
        "heads-diffusion.safetensors", "heads-raw_pixels.safetensors", "heads-random_weights.safetensors",
        "heads-single_mlp.safetensors"}

    preds = tmp_path / "preds"
    image = seg_folder / "test" / "images" / "s0.png"
    assert main(["segment", "predict", "--run", str(run), str(image), "--out", str(preds)]) == 0
    labels = read_mask(preds / "s0-labels.png")
    assert labels.shape == (SIZE, SIZE) and 0 <= labels.min() and labels.max() < len(CLASSES)
    assert (preds / "s0-overlay.png").is_file() and (preds / "s0-uncertainty.png").is_file()

    capsys.readouterr()
    assert main(["segment", "eval", "--run", str(run), "--data", str(seg_folder), "--pictures", "2"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((run / "segment-eval.json").read_text())
    assert {"miou", "per_class", "pixel_accuracy", "baselines", "peak_rss_mb", "train_peak_rss_mb"} <= set(result)
    assert set(result["baselines"]) == {"raw_pixels", "random_weights", "single_mlp"}
    assert list(result["per_class"]) == CLASSES and 0 <= result["miou"] <= 1 and result["n_test"] == 4
    assert "raw pixels" in printed and "mIoU" in printed
    assert (run / "examples.png").stat().st_size > 0 and (run / "per_class_iou.png").stat().st_size > 0

    # a second training run reuses the feature cache
    assert main(["segment", "train", "--model", str(rgb_unet_dir), "--data", str(seg_folder), "--labelled", "5",
                 "--out", str(run), "--t", "50,150", "--no-baselines", *FAST]) == 0
    assert "reusing cached features" in capsys.readouterr().out


def test_a_grey_backbone_segments_rgb_images_and_says_so(unet_dir, seg_folder, tmp_path, capsys):
    """As `--model mnist-ddpm` on the bundled scenes: the diffusion features see grey images."""
    run = tmp_path / "run"
    assert main(["segment", "train", "--model", str(unet_dir), "--data", str(seg_folder), "--labelled", "4",
                 "--out", str(run), "--t", "50", "--no-baselines", *FAST]) == 0
    assert "converted to 1 channel(s) for the model" in capsys.readouterr().out
    assert main(["segment", "predict", "--run", str(run), str(seg_folder / "test" / "images" / "s0.png"),
                 "--out", str(tmp_path / "preds")]) == 0
    assert read_mask(tmp_path / "preds" / "s0-labels.png").shape == (SIZE, SIZE)


def test_select_chooses_cells_on_labelled_images_only(rgb_unet_dir, tmp_path):
    cfg = SegConfig(model=str(rgb_unet_dir), labelled=4, blocks=["mid_block", "up_blocks.0", "up_blocks.1"],
                    ts=[50, 250], k=1, max_epochs=1, pixels_per_image=150, batch_size=64, select=True, select_blocks=2,
                    select_ts=1, baselines=False)
    train_segmenter(cfg, tmp_path / "run", load_seg_data("scenes", "train", 4))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    chosen = config["selection"]["chosen"]
    assert config["blocks"] == chosen["blocks"] and len(chosen["blocks"]) == 2 and config["ts"] == chosen["ts"]
    assert len(chosen["ts"]) == 1 and len(config["selection"]["cells"]) == 6 and config["selection"]["folds"] == 3
    assert all(0 <= c["cv_miou"] <= 1 for c in config["selection"]["cells"])

    assert main(["segment", "eval", "--run", str(tmp_path / "run"), "--data", "scenes", "--split", "val", "--n", "2",
                 "--no-baselines", "--pictures", "1"]) == 0
    scored = json.loads((tmp_path / "run" / "segment-eval.json").read_text())
    assert scored["data"] == "scenes/val" and scored["n_test"] == 2


# ----------------------------------------------------------------------------- bad input

def _break_size(root):
    Image.fromarray(np.zeros((SIZE, SIZE + 2), np.uint8)).save(root / "masks" / "s1.png")


def _break_label(root):
    Image.fromarray(np.full((SIZE, SIZE), 12, np.uint8)).save(root / "masks" / "s2.png")


def _lone_image(root):
    (root / "masks" / "s0.png").unlink()


def _lone_mask(root):
    (root / "images" / "s0.png").unlink()


def _empty(root):
    for p in (root / "images").iterdir():
        p.unlink()


@pytest.mark.parametrize("breaker, message", [
    (_break_size, "is 32×34 but its image"),
    (_break_label, "label(s) [12] outside the declared classes 0..10"),
    (_lone_image, "have no mask"),
    (_lone_mask, "have no image"),
    (_empty, "is empty"),
])
def test_bad_folders_are_clear_errors(tmp_path, breaker, message):
    root = write_folder(tmp_path / "data", 3)
    breaker(root)
    with pytest.raises(DiffrepError, match=re.escape(message)):
        load_seg_data(str(root), "train")


def test_too_few_labelled_images_is_an_error_with_exit_code_2(tmp_path, rgb_unet_dir, capsys):
    root = write_folder(tmp_path / "data", 3)
    assert main(["segment", "train", "--model", str(rgb_unet_dir), "--data", str(root), "--labelled", "5",
                 "--out", str(tmp_path / "run")]) == 2
    assert "asked for 5 labelled images but" in capsys.readouterr().err
    with pytest.raises(DiffrepError, match="no images/ folder"):
        load_seg_data(str(tmp_path), "train")


def test_colour_copies_permute_channels_and_keep_masks():
    from diffrep.segment.ddpm_seg import with_colour_copies

    images = torch.stack([torch.full((4, 4), v) for v in (0.1, 0.2, 0.3)])[None]   # 1×3×4×4, channel c = 0.1(c+1)
    masks = torch.arange(16).view(1, 4, 4)
    data = with_colour_copies(ImageSet(images, classes=["a"] * 16, name="x", masks=masks), 5)
    assert data.images.shape == (6, 3, 4, 4) and torch.equal(data.masks, masks.repeat(6, 1, 1))
    orders = {tuple(round(v, 1) for v in im[:, 0, 0].tolist()) for im in data.images}
    assert len(orders) == 6   # the original and all five other channel orders
    with pytest.raises(DiffrepError, match="1 to 5 copies"):
        with_colour_copies(ImageSet(images, classes=["a"] * 16, name="x", masks=masks), 6)


def test_held_out_images_are_whole_and_never_trained_on():
    from diffrep.segment.ddpm_seg import held_out_sets, with_colour_copies

    data = with_colour_copies(ImageSet(torch.zeros(4, 3, 8, 8), classes=["a"], name="x", masks=torch.zeros(4, 8, 8, dtype=torch.long)), 1)
    held = held_out_sets(data, list(range(8)), SegConfig(held_out_images=1, colour_copies=1))
    assert [bool(held[i].all()) for i in range(8)] == [False, False, False, True] * 2   # the last one and its copy
    assert not any(held[i].any() for i in (0, 1, 2, 4, 5, 6))
    tenth = held_out_sets(data, list(range(8)), SegConfig(colour_copies=1))
    assert torch.equal(tenth[1], tenth[5]) and 0 < tenth[1].float().mean() < 0.3
    with pytest.raises(DiffrepError, match="leaves no labelled image"):
        held_out_sets(data, list(range(8)), SegConfig(held_out_images=4, colour_copies=1))


def test_scenes_validation_split_is_never_labelled_and_folders_have_none(tmp_path):
    """Settings are chosen on 'val' scenes: train-split scenes past every possible labelled one."""
    from diffrep.data.scenes import scenes
    from diffrep.data.masks import VAL_START

    val = load_seg_data("scenes", "val", 3)
    images, masks = scenes("train", 3, start=VAL_START)
    assert val.name == "scenes/val" and torch.equal(val.images, images) and torch.equal(val.masks, masks)
    labelled = load_seg_data("scenes", "train", 3)
    assert not torch.equal(labelled.images, val.images)
    with pytest.raises(DiffrepError, match="at most 1000 labelled scenes"):
        load_seg_data("scenes", "train", VAL_START + 1)
    with pytest.raises(DiffrepError, match="has no val/ folder"):
        load_seg_data(str(write_folder(tmp_path / "data", 3)), "val")


def test_bundled_scenes_are_deterministic_with_bright_digits_on_a_dim_photograph():
    """Several digits per scene, so that 20 labelled scenes show most classes; masks mark inked pixels."""
    from diffrep.data.scenes import DIGITS_PER_SCENE, INK, scene

    counts = []
    for split in ("train", "test"):
        for i in range(20):
            image, mask = scene(split, i)
            again, mask_again = scene(split, i)
            assert np.array_equal(image, again) and np.array_equal(mask, mask_again)
            assert set(np.unique(mask)) <= set(range(11)) and image.min() >= 0 and image.max() <= 1
            # a labelled pixel is at least half ink, and ink is bright in every channel
            assert image[:, mask > 0].min() >= 0.5 * INK[0]
            assert image[:, mask > 0].mean() > image[:, mask == 0].mean() + 0.3
            counts.append(len(np.unique(mask)) - 1)
    assert max(counts) <= DIGITS_PER_SCENE[1] and np.mean(counts) >= 2   # classes per scene (a repeat counts once)
    assert not np.array_equal(scene("train", 0)[0], scene("test", 0)[0])


def test_a_folder_laid_out_as_the_docs_say_trains_and_scores(rgb_unet_dir, tmp_path):
    """images/ + masks/ + classes.json in the very format the docs' example shows (docs/data.md)."""
    page = (Path(__file__).parents[1] / "docs" / "data.md").read_text()
    example = re.search(r"`classes\.json` \(`(\{.*?\})`", page)
    assert example, "docs/data.md shows a classes.json example"
    spec = json.loads(example.group(1))
    root = write_folder(tmp_path / "data", 3)
    n_classes = len(spec["classes"])
    for mask in (root / "masks").iterdir():   # the example's classes: labels 0..n-1 and its ignore label
        m = np.array(Image.open(mask))
        m[(m >= n_classes) & (m != spec["ignore_index"])] = n_classes - 1
        Image.fromarray(m).save(mask)
    (root / "classes.json").write_text(example.group(1))
    data = load_seg_data(str(root), "train")
    assert data.classes == spec["classes"] and data.ignore_index == spec["ignore_index"]
    cfg = SegConfig(model=str(rgb_unet_dir), data=str(root), k=1, max_epochs=1, pixels_per_image=100, ts=[50],
                    baselines=False)
    result = train_segmenter(cfg, tmp_path / "run")
    assert result["n_labelled"] == 3 and (tmp_path / "run" / "heads-diffusion.safetensors").is_file()


def test_a_folder_being_scored_is_read_lazily_and_each_mask_checked_as_read(tmp_path):
    root = write_folder(tmp_path / "data", 3)
    _break_label(root)
    data = load_seg_data(str(root), "train", classes=CLASSES, ignore_index=255, lazy=True)
    assert len(data) == 3 and not torch.is_tensor(data.images) and not torch.is_tensor(data.masks)
    assert data.images[0].shape == (3, SIZE, SIZE) and data.masks[0].shape == (SIZE, SIZE)
    with pytest.raises(DiffrepError, match=re.escape("s2.png hold label(s) [12] outside the declared classes")):
        data.masks[2]


# ----------------------------------------------------------------------------- cache: resume, processes

class _CountingSource:
    """Maps that identify their image (its mean); counts the images it was asked for."""
    channels = {"m": 1}

    def __init__(self):
        self.seen = 0

    def identity(self) -> dict:
        return {"kind": "counting"}

    def maps(self, images, indices=None):
        self.seen += len(images)
        return {"m": images.mean(1, keepdim=True)}


def test_an_interrupted_cache_resumes_and_recomputes_only_what_is_missing_or_damaged(tmp_path, capsys):
    from diffrep.features import ImageCache
    images = torch.rand(10, 3, 8, 8)
    first = _CountingSource()
    ImageCache(tmp_path / "c", first, images, batch_size=2)
    whole = [ImageCache(tmp_path / "c", first, images, 2).maps(i, ["m"])["m"].clone() for i in range(10)]
    assert first.seen == 10 and "reusing cached features" in capsys.readouterr().out

    (tmp_path / "c" / "cache.json").unlink()               # as if killed before the end:
    (tmp_path / "c" / "00007.safetensors").unlink()        # one image never written,
    (tmp_path / "c" / "00002.safetensors").write_bytes(b"damaged")   # one cut short
    again = _CountingSource()
    cache = ImageCache(tmp_path / "c", again, images, batch_size=2)
    printed = capsys.readouterr().out
    assert "continuing the unfinished extraction" in printed and "00002.safetensors is damaged" in printed
    assert again.seen == 4                                  # batches {2,3} and {6,7} only
    assert all(torch.equal(cache.maps(i, ["m"])["m"], whole[i]) for i in range(10))

    other = images.flip(0)                                  # other images: nothing kept
    redo = _CountingSource()
    ImageCache(tmp_path / "c", redo, other, batch_size=2)
    assert redo.seen == 10


def test_segment_train_on_two_processes_selects_and_caches_what_one_process_does(rgb_unet_dir, seg_folder, tmp_path):
    import subprocess
    import sys
    from safetensors.torch import load_file
    args = ["segment", "train", "--model", str(rgb_unet_dir), "--data", str(seg_folder), "--labelled", "5",
            "--blocks", "mid_block,up_blocks.0", "--t", "50,150", "--select", *FAST]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "diffrep.cli", *args, "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / r / "config.json").read_text()) for r in ("one", "two"))
    assert one["selection"]["chosen"] == two["selection"]["chosen"] and one["blocks"] == two["blocks"]
    for a, b in zip(one["selection"]["cells"], two["selection"]["cells"]):   # scored by the main process alone
        assert (a["t"], a["block"]) == (b["t"], b["block"]) and abs(a["cv_miou"] - b["cv_miou"]) < 0.02
    assert (tmp_path / "two" / "segment-train.json").is_file()
    for name in ("diffusion", "random_weights"):
        for i in range(5):
            a, b = (load_file(tmp_path / r / "cache" / f"train-{name}" / f"{i:05d}.safetensors") for r in ("one", "two"))
            assert set(a) == set(b)
            for k in a:
                torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-2, atol=1e-2)
