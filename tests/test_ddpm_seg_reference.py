"""DDPM-Seg as its reference runs it: its data layout (images beside .npy label arrays, real/train and
real/test), its settings per data set (`--reference`), and its one noise for every image and every t."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from diffrep import DiffrepError
from diffrep.cli import main
from diffrep.core import Featurizer, load_backbone
from diffrep.data import load, load_seg_data
from diffrep.data.label_arrays import nearest
from diffrep.features import DiffusionFeatures
from diffrep.segment.ddpm_seg import SegConfig
from diffrep.segment.ddpm_seg.config import with_reference
from diffrep.segment.ddpm_seg.reference import REFERENCE

from .conftest import SIZE

FAST = ["--k", "2", "--max-epochs", "1", "--pixels-per-image", "200", "--extract-batch", "4", "--no-baselines"]
SIDE = 2 * SIZE   # the files' side: the reader resizes them to the model's (SIZE)


def write_pair(folder, stem: str, seed: int, suffix: str = ".png", labels=None) -> None:
    """An image and its .npy labels as the reference's data sets hold them: three horizontal bands of
    classes 1, 2, 3 (a few 255 pixels), each band its own colour plus noise."""
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = np.repeat(np.array([1, 2, 3]), [SIDE // 3, SIDE // 3, SIDE - 2 * (SIDE // 3)])[:, None].repeat(SIDE, 1)
        labels[:2, :2] = 255
    colours = np.array([[0, 0, 0]] + [[200, 40, 40], [40, 200, 40], [40, 40, 200]] + [[0, 0, 0]] * 252)
    image = np.clip(colours[np.clip(labels, 0, 255)] + rng.integers(-30, 30, labels.shape + (3,)), 0, 255)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.astype(np.uint8)).save(folder / f"{stem}{suffix}")
    np.save(folder / f"{stem}.npy", labels.astype(np.int64))


@pytest.fixture
def reference_root(tmp_path):
    """A data set root laid out as DDPM-Seg's datasets/<set>/: real/train and real/test."""
    root = tmp_path / "ffhq_34"
    for i in range(3):
        write_pair(root / "real" / "train", f"image_{i}", i)
    for i in range(2):
        write_pair(root / "real" / "test", f"image_{i}", 10 + i, suffix=".jpg")
    return root


# ----------------------------------------------------------------------------- layout

def test_the_reference_layout_is_read_split_by_split_and_resized_to_the_model(reference_root):
    train = load_seg_data(str(reference_root), "train", side=SIZE)
    assert train.name.endswith("real/train") and train.images.shape == (3, 3, SIZE, SIZE)
    assert train.masks.shape == (3, SIZE, SIZE)
    stored = np.load(reference_root / "real" / "train" / "image_0.npy")
    assert torch.equal(train.masks[0], torch.from_numpy(stored[::2, ::2]))   # nearest: every other pixel
    test = load_seg_data(str(reference_root), "test", classes=[str(c) for c in range(4)], ignore_index=255, lazy=True,
                         side=SIZE)
    assert len(test) == 2 and not torch.is_tensor(test.images)
    assert test.images[1].shape == (3, SIZE, SIZE) and test.masks[1].shape == (SIZE, SIZE)
    own = load_seg_data(str(reference_root / "real" / "test"), "train")   # a folder of pairs, at its own size
    assert own.images.shape == (2, 3, SIDE, SIDE)
    assert len(load(str(reference_root), "test")) == 2   # the general loader knows the layout too


def test_nearest_takes_the_pixel_opencv_takes():
    labels = np.arange(5)[:, None] * 10 + np.arange(5)[None, :]
    assert nearest(labels, 3).tolist() == [[0, 1, 3], [10, 11, 13], [30, 31, 33]]   # ⌊i·5/3⌋ = 0, 1, 3
    assert nearest(labels, 7)[:, 0].tolist() == [0, 0, 10, 20, 20, 30, 40]          # ⌊i·5/7⌋


def _wrong_size(folder):
    np.save(folder / "image_1.npy", np.zeros((SIDE, SIDE - 4), np.int64))


def _three_d(folder):
    np.save(folder / "image_1.npy", np.zeros((SIDE, SIDE, 3), np.int64))


def _fractions(folder):
    np.save(folder / "image_1.npy", np.full((SIDE, SIDE), 0.5))


def _no_labels(folder):
    (folder / "image_2.npy").unlink()


@pytest.mark.parametrize("breaker, message", [
    (_wrong_size, f"image_1.npy is {SIDE}×{SIDE - 4} but its image "),
    (_three_d, "holds a 3-D int64 array of shape (64, 64, 3); it must be a 2-D integer array"),
    (_fractions, "holds a 2-D float64 array of shape (64, 64); it must be a 2-D integer array"),
    (_no_labels, "1 image(s) in "),
])
def test_bad_label_arrays_are_one_line_errors(reference_root, breaker, message):
    folder = reference_root / "real" / "train"
    breaker(folder)
    for lazy in (False, True):   # training reads every file at once; scoring, each as it is used
        with pytest.raises(DiffrepError, match=re.escape(message)) as err:
            data = load_seg_data(str(reference_root), "train", classes=[str(c) for c in range(4)], ignore_index=255,
                                 lazy=lazy, side=SIZE)
            [data.masks[i] for i in range(len(data))]
        assert "\n" not in str(err.value)
    if breaker is _wrong_size:
        assert f"image_1.png is {SIDE}×{SIDE}" in str(err.value)


def test_segment_train_and_eval_read_the_reference_layout_end_to_end(rgb_unet_dir, reference_root, tmp_path):
    run = tmp_path / "run"
    assert main(["segment", "train", "--model", str(rgb_unet_dir), "--data", str(reference_root), "--t", "50",
                 "--blocks", "mid_block", "--out", str(run), *FAST]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["labelled"] == 3 and config["data_name"].endswith("real/train")
    assert config["reference"] is None and config["noise_per_t"] is True   # the default noise: one draw per t
    assert main(["segment", "eval", "--run", str(run), "--data", str(reference_root), "--no-baselines",
                 "--pictures", "1"]) == 0
    scored = json.loads((run / "segment-eval.json").read_text())
    assert scored["n_test"] == 2 and scored["data"].endswith("real/test") and scored["per_class"]["2"] is not None


# ----------------------------------------------------------------------------- --reference

def test_reference_settings_are_the_ddpm_json_and_given_flags_override_them():
    cfg = with_reference("ffhq_34")
    assert cfg.blocks == [f"output_blocks.{i}" for i in (5, 6, 7, 8, 12)] and cfg.ts == [50, 150, 250]
    assert (cfg.k, cfg.batch_size, cfg.labelled, cfg.reference) == (10, 64, 20, "ffhq_34")
    assert cfg.shared_noise and not cfg.noise_per_t
    assert with_reference("bedroom_28", labelled=5, k=3).labelled == 5 and REFERENCE["bedroom_28"].ignore_label == 0
    assert with_reference(None) == SegConfig()
    with pytest.raises(DiffrepError, match="unknown --reference 'ffhq'"):
        with_reference("ffhq")


def test_reference_blocks_resolve_to_the_adm_modules_on_an_adm_shaped_unet(tmp_path):
    """Six levels of two ResNets, attention on the three lowest resolutions, as ADM-256 (tiny widths)."""
    torch.manual_seed(0)
    UNet2DModel(sample_size=64, block_out_channels=(4, 4, 8, 8, 8, 8), norm_num_groups=2, layers_per_block=2,
                down_block_types=("DownBlock2D",) * 3 + ("AttnDownBlock2D",) * 3,
                up_block_types=("AttnUpBlock2D",) * 3 + ("UpBlock2D",) * 3, attention_head_dim=4,
                in_channels=3, out_channels=3).save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "scheduler")
    featurizer = Featurizer(load_backbone(str(tmp_path)))
    assert featurizer.check_blocks(with_reference("ffhq_34").blocks) == [
        "up_blocks.1.upsamplers.0", "up_blocks.2.attentions.0", "up_blocks.2.attentions.1", "up_blocks.2.upsamplers.0",
        "up_blocks.4.resnets.0"]


def test_segment_train_with_reference_uses_its_settings_classes_and_noise(rgb_unet_dir, reference_root, tmp_path):
    run = tmp_path / "run"
    assert main(["segment", "train", "--model", str(rgb_unet_dir), "--data", str(reference_root), "--reference",
                 "ffhq_34", "--labelled", "3", "--blocks", "up_blocks.0", "--out", str(run), *FAST]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["reference"] == "ffhq_34" and config["ts"] == [50, 150, 250] and config["batch_size"] == 64
    assert (config["labelled"], config["k"], config["blocks"]) == (3, 2, ["up_blocks.0"])   # the flags given
    assert config["shared_noise"] and not config["noise_per_t"]
    assert config["classes"] == [str(c) for c in range(34)] and config["ignore_index"] == 255   # its classes
    assert json.loads((run / "segment-train.json").read_text())["reference"] == "ffhq_34"


# ----------------------------------------------------------------------------- noise

def test_reference_noise_is_one_tensor_for_every_t(rgb_unet_dir, monkeypatch):
    """The noise added at t = 50 and at t = 150 is the same tensor with the reference's noise, and two
    different draws with the default (shared, one per t), on the path `segment train` uses."""
    import diffrep.core.featurizer as featurizer_module

    drawn = []
    real = featurizer_module.image_noise
    monkeypatch.setattr(featurizer_module, "image_noise", lambda *a: drawn.append(real(*a)) or drawn[-1])
    featurizer = Featurizer(load_backbone(str(rgb_unet_dir)))
    images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    for per_t in (False, True):
        drawn.clear()
        DiffusionFeatures(featurizer, ["mid_block"], [50, 150], shared_noise=True, noise_per_t=per_t).maps(images)
        at_50, at_150 = drawn
        assert torch.equal(at_50, at_150) != per_t
    reference = with_reference("ffhq_34")
    assert DiffusionFeatures(featurizer, ["mid_block"], [50], noise_per_t=reference.noise_per_t).identity()[
        "noise_per_t"] is False
