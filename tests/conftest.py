"""Tiny models of each denoiser class, saved as real diffusers folders so that tests go through the
same loading code as users' checkpoints. Threads are limited so the suite behaves on 2 cores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, DDPMScheduler, DiTTransformer2DModel, EDMEulerScheduler,
                       UNet2DConditionModel, UNet2DModel)
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE = 32
CLASSES = ["background", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
torch.set_num_threads(1)


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(block_out_channels=(4, 8), norm_num_groups=2, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=3, layers_per_block=2,
                       sample_size=32, in_channels=1, out_channels=1)


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 8), latent_channels=4,
                         norm_num_groups=2, sample_size=32)


def tiny_cond_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(block_out_channels=(4, 8), norm_num_groups=4, cross_attention_dim=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2,
                                layers_per_block=1, sample_size=16, in_channels=4, out_channels=4)


def tiny_dit() -> DiTTransformer2DModel:
    torch.manual_seed(0)
    return DiTTransformer2DModel(in_channels=4, out_channels=8, num_attention_heads=2, attention_head_dim=4,
                                 num_layers=2, num_embeds_ada_norm=8, patch_size=2, sample_size=8)


def write_tiny_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer with a 30-token vocabulary (letters and specials), enough to encode prompts."""
    folder.mkdir(parents=True)
    tokens = ["!", "a", "p", "h", "o", "t", "f", "c", "r", "s", "d", "g", "e", "n", "i", "l", "m", "u", "w", "y"]
    vocab = {tok: i for i, tok in enumerate(tokens + [t + "</w>" for t in tokens])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=8).save_pretrained(folder)


@pytest.fixture(scope="session")
def unet_dir(tmp_path_factory) -> Path:
    """A pixel DDPM pipeline folder: unet/ + scheduler/."""
    root = tmp_path_factory.mktemp("unet_pipe")
    tiny_unet().save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="session")
def latent_unet_dir(tmp_path_factory) -> Path:
    """An SD-shaped pipeline folder: unet/ (conditional), vae/, scheduler/, text_encoder/, tokenizer/."""
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("latent_pipe")
    tiny_cond_unet().save_pretrained(root / "unet")
    tiny_vae().save_pretrained(root / "vae")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=42, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=8, projection_dim=8,
                                        bos_token_id=40, eos_token_id=41, pad_token_id=41))
    text.save_pretrained(root / "text_encoder")
    write_tiny_tokenizer(root / "tokenizer")
    return root


@pytest.fixture(scope="session")
def dit_dir(tmp_path_factory) -> Path:
    """A latent DiT pipeline folder with the EDM noise form: transformer/ + vae/ + scheduler/ (EDM)."""
    root = tmp_path_factory.mktemp("dit_pipe")
    tiny_dit().save_pretrained(root / "transformer")
    tiny_vae().save_pretrained(root / "vae")
    EDMEulerScheduler().save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="session")
def labelled_folder(tmp_path_factory) -> Path:
    """A labelled image folder (class sub-folders) of 40 real MNIST digits, 28×28 grey PNGs."""
    from diffrep.data import mnist

    root = tmp_path_factory.mktemp("digits")
    data = mnist("train")
    for i in range(40):
        img = ((data.images[i, 0, 2:-2, 2:-2] + 1) * 127.5).round().byte().numpy()
        folder = root / str(int(data.labels[i]))
        folder.mkdir(exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def rgb_unet_dir(tmp_path_factory):
    """An RGB pixel UNet without attention anywhere (as scenes-ddpm: mid_block.attentions = [None])."""
    root = tmp_path_factory.mktemp("rgb_unet")
    torch.manual_seed(0)
    UNet2DModel(block_out_channels=(4, 8), norm_num_groups=2, down_block_types=("DownBlock2D",) * 2,
                up_block_types=("UpBlock2D",) * 2, layers_per_block=1, sample_size=SIZE, in_channels=3, out_channels=3,
                add_attention=False).save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return root


def write_folder(root, n: int, split: str = "train", ignore_pixels: bool = True):
    """n bundled scenes (32×32) as images/ + masks/ PNGs with a classes.json (ignore label 255)."""
    from diffrep.data.scenes import scenes

    images, masks = scenes(split, n, size=SIZE)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(((images[i] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()).save(root / "images" / f"s{i}.png")
        mask = masks[i].numpy().astype(np.uint8)
        if ignore_pixels:
            mask[:2, :2] = 255
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    (root / "classes.json").write_text(json.dumps({"classes": CLASSES, "ignore_index": 255}))   # as the README says
    return root


def random_images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (n, channels, size, size)).astype(np.float32))
