"""The featurizer on tiny models of each denoiser class, loaded from real diffusers folders."""

from __future__ import annotations

import pytest
import torch

from diffrep import DiffrepError, load_backbone
from diffrep.core import Featurizer, image_noise

from .conftest import random_images

MODELS = ["unet_dir", "latent_unet_dir", "dit_dir"]


def _level(backbone):
    return 0.5 if backbone.noise.kind == "edm" else 50


@pytest.fixture(params=MODELS)
def featurizer(request) -> Featurizer:
    return Featurizer(load_backbone(request.getfixturevalue(request.param)))


def _images(f: Featurizer, n: int = 3, seed: int = 0) -> torch.Tensor:
    return random_images(n, f.backbone.image_channels, f.backbone.image_size, seed)


def test_every_block_matches_feature_info(featurizer):
    info = featurizer.feature_info()
    assert len(info) >= 2 and len({b.name for b in info}) == len(info)
    images = _images(featurizer)
    feats = featurizer.extract(images, _level(featurizer.backbone), [b.name for b in info])
    size = featurizer.backbone.image_size
    for b in info:
        f = feats[b.name]
        assert f.dtype == torch.float32
        assert tuple(f.shape) == (3, b.channels, size // b.stride, size // b.stride), b


def test_names_are_module_paths(featurizer):
    modules = dict(featurizer.model.named_modules())
    for b in featurizer.feature_info():
        assert b.name in modules
    tops = featurizer.block_names(top_level_only=True)
    expected = ["transformer_blocks.0"] if featurizer.is_dit else ["down_blocks.0", "mid_block", "up_blocks.0"]
    assert all(name in tops for name in expected)


def test_early_stop_equals_full_forward(featurizer):
    images = _images(featurizer)
    t = _level(featurizer.backbone)
    for block in featurizer.default_blocks():
        early = featurizer.extract(images, t, [block], seed=3)[block]
        full = featurizer.extract(images, t, [block], seed=3, stop_early=False)[block]
        torch.testing.assert_close(early, full, rtol=0, atol=0)


def test_early_stop_skips_the_rest_of_the_network():
    """A tap on mid_block must not run the decoder: count calls of the output layer and of up_blocks."""
    from .conftest import tiny_unet
    from diffrep.core import Backbone, noise_form
    from diffusers import DDPMScheduler

    f = Featurizer(Backbone(tiny_unet().eval(), noise_form(DDPMScheduler())))
    calls = []
    f.model.up_blocks[0].register_forward_hook(lambda *a: calls.append("up"))
    f.model.conv_out.register_forward_hook(lambda *a: calls.append("out"))
    f.feature_info()
    calls.clear()
    f.extract(random_images(2, 1, 32), 10, ["mid_block"])
    assert calls == []
    f.extract(random_images(2, 1, 32), 10, ["mid_block"], stop_early=False)
    assert calls == ["up", "out"]


def test_same_seed_same_features_other_seed_differs(featurizer):
    images, t = _images(featurizer), _level(featurizer.backbone)
    block = featurizer.default_blocks()[-1]
    a = featurizer.extract(images, t, [block], seed=7)[block]
    b = featurizer.extract(images, t, [block], seed=7)[block]
    c = featurizer.extract(images, t, [block], seed=8)[block]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_ensemble_is_the_mean_of_its_draws(featurizer):
    """k draws run as one batch and averaged equal the k draws' features computed one by one."""
    bb, t = featurizer.backbone, _level(featurizer.backbone)
    images = _images(featurizer, n=2)
    block = featurizer.default_blocks()[0]
    got = featurizer.extract(images, t, [block], ensemble=3, seed=5)[block]
    latents = bb.encode(images)
    eps = image_noise(5, [0, 1], 3, bb.noise.check(t), latents.shape[1:])
    draws = []
    for d in range(3):
        x_t = bb.noise.add_noise(latents, eps[d], bb.noise.check(t))
        draws.append(featurizer._run(x_t, bb.noise.check(t), [block])[block])
    torch.testing.assert_close(got, torch.stack(draws).mean(0), rtol=1e-4, atol=1e-5)


def test_shared_noise_gives_equal_features_for_equal_images(featurizer):
    image = _images(featurizer, n=1)
    pair = torch.cat([image, image])
    block, t = featurizer.default_blocks()[-1], _level(featurizer.backbone)
    shared = featurizer.extract(pair, t, [block], shared_noise=True)[block]
    fresh = featurizer.extract(pair, t, [block], shared_noise=False)[block]
    torch.testing.assert_close(shared[0], shared[1])
    assert not torch.allclose(fresh[0], fresh[1])


def test_bf16_autocast_is_close_to_fp32(featurizer):
    images, t = _images(featurizer), _level(featurizer.backbone)
    block = featurizer.default_blocks()[-1]
    fp32 = featurizer.extract(images, t, [block])[block]
    bf16 = featurizer.extract(images, t, [block], bf16=True)[block]
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.1 * fp32.abs().max() + 0.05


def test_prompt_changes_conditional_features(latent_unet_dir):
    f = Featurizer(load_backbone(latent_unet_dir))
    images = _images(f)
    block = "up_blocks.1"
    empty = f.extract(images, 50, [block])[block]
    again = f.extract(images, 50, [block], prompt="")[block]
    prompted = f.extract(images, 50, [block], prompt="a photo of a dog")[block]
    torch.testing.assert_close(empty, again)
    assert not torch.allclose(empty, prompted)


def test_dit_uses_the_null_class_and_edm_sigma(dit_dir):
    bb = load_backbone(dit_dir)
    assert bb.noise.kind == "edm" and bb.is_latent
    assert bb.condition(2).tolist() == [bb.denoiser.config.num_embeds_ada_norm] * 2
    f = Featurizer(bb)
    images = _images(f)
    low = f.extract(images, 0.01, ["transformer_blocks.1"])["transformer_blocks.1"]
    high = f.extract(images, 50.0, ["transformer_blocks.1"])["transformer_blocks.1"]
    assert not torch.allclose(low, high)


def test_model_folder_round_trip_gives_same_features(unet_dir, tmp_path):
    bb = load_backbone(unet_dir)
    bb.denoiser.save_pretrained(tmp_path / "lone")  # a lone model folder: DDPM schedule by default
    again = load_backbone(tmp_path / "lone")
    images = random_images(2, 1, 32)
    a = Featurizer(bb).extract(images, 100, ["mid_block"])["mid_block"]
    b = Featurizer(again).extract(images, 100, ["mid_block"])["mid_block"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name, channels, size", [("mnist-ddpm", 1, 32), ("scenes-ddpm", 3, 32), ("photos-ddpm", 3, 32)])
def test_bundled_model_loads_by_name(name, channels, size):
    bb = load_backbone(name)
    assert bb.image_channels == channels and bb.image_size == size and bb.noise.kind == "vp"
    info = Featurizer(bb).feature_info()
    assert [b.name for b in info if b.top_level][:2] == ["conv_in", "down_blocks.0"]


def test_mid_block_without_attention(tmp_path):
    """diffusers puts None in mid_block.attentions when add_attention=False; it is not a block."""
    torch.manual_seed(0)
    from diffusers import UNet2DModel

    UNet2DModel(block_out_channels=(4, 8), norm_num_groups=2, layers_per_block=1, sample_size=16, in_channels=3,
                out_channels=3, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                add_attention=False).save_pretrained(tmp_path / "m")
    featurizer = Featurizer(load_backbone(tmp_path / "m"))
    names = featurizer.block_names()
    assert "mid_block.resnets.1" in names and not any(".attentions." in n for n in names)
    feats = featurizer.extract(random_images(2, 3, 16), 50, ["mid_block"])
    assert feats["mid_block"].shape == (2, 8, 8, 8)


# ---------------------------------------------------------------- bad input

def test_unknown_block_lists_valid_names(featurizer):
    with pytest.raises(DiffrepError, match="unknown block.*nope.*valid names:.*"):
        featurizer.extract(_images(featurizer), _level(featurizer.backbone), ["nope"])


@pytest.mark.parametrize("t", [-1, 1000, 2.5])
def test_t_outside_the_vp_schedule(unet_dir, t):
    f = Featurizer(load_backbone(unet_dir))
    with pytest.raises(DiffrepError, match=r"outside the schedule.*\[0, 999\]"):
        f.extract(random_images(1, 1, 32), t, ["mid_block"])


def test_sigma_outside_the_edm_schedule(dit_dir):
    f = Featurizer(load_backbone(dit_dir))
    with pytest.raises(DiffrepError, match="σ=500.*outside the schedule"):
        f.extract(_images(f), 500.0, ["transformer_blocks.0"])


def test_wrong_channel_count_is_refused(unet_dir):
    f = Featurizer(load_backbone(unet_dir))
    with pytest.raises(DiffrepError, match=r"N×1×H×W images; got shape \(2, 3, 32, 32\)"):
        f.extract(random_images(2, 3, 32), 10, ["mid_block"])


def test_size_not_divisible_by_stride_is_refused(unet_dir):
    f = Featurizer(load_backbone(unet_dir))
    with pytest.raises(DiffrepError, match="not divisible by the model's total stride 2"):
        f.extract(random_images(2, 1, 33), 10, ["mid_block"])


def test_dit_refuses_other_sizes(dit_dir):
    f = Featurizer(load_backbone(dit_dir))
    with pytest.raises(DiffrepError, match="DiT takes 16×16 images only"):
        f.extract(random_images(1, 3, 32), 0.5, ["transformer_blocks.0"])


@pytest.mark.parametrize("folder", ["unet_dir", "latent_unet_dir", "dit_dir"])
def test_the_block_catalogue_from_the_smallest_input_equals_the_one_at_the_models_own_size(folder, request):
    featurizer = Featurizer(load_backbone(request.getfixturevalue(folder)))
    own = featurizer.model.config.sample_size
    assert featurizer.feature_info() == featurizer.catalogue(own)
    if not featurizer.is_dit:
        assert featurizer.smallest_side() < own or own <= 4


def test_weights_are_cast_on_gpus_only():
    from diffrep.core import weight_dtype

    assert weight_dtype("fp16", "cuda") == torch.float16 and weight_dtype("bf16", "cuda:0") == torch.bfloat16
    assert weight_dtype("bf16", "cpu") == torch.float32 and weight_dtype("fp32", "cuda") == torch.float32
    with pytest.raises(DiffrepError, match="fp16 on the CPU is refused"):
        weight_dtype("fp16", "cpu")


def test_reduced_precision_weights_extract_what_fp32_weights_do(unet_dir):
    """The path a GPU takes with --precision bf16 (weights cast, autocast on), run here on the CPU."""
    from diffrep.core import random_init

    images = torch.rand(4, 1, 32, 32) * 2 - 1
    ref = Featurizer(load_backbone(unet_dir, "cpu")).extract(images, 25, ["mid_block"], seed=0)["mid_block"]
    backbone = load_backbone(unet_dir, "cpu").to("cpu", torch.bfloat16)
    got = Featurizer(backbone).extract(images, 25, ["mid_block"], seed=0, precision="bf16")["mid_block"]
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert (got - ref).abs().mean() < 0.05 * ref.abs().mean()
    assert random_init(backbone, 0).denoiser.dtype == torch.bfloat16
