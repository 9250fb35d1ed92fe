"""The real photographs bundled with scikit-image, as a natural-image domain: random crops for
pre-training (`diffrep pretrain --data photos`) and whole images for correspondence benchmarks."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

# Photographs of scenes and objects (grey ones are repeated into RGB); textures and synthetic images left out.
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
          "retina", "moon", "coins", "clock", "brick", "grass", "gravel", "motorcycle_left", "motorcycle_right")


@lru_cache(maxsize=None)
def photo(name: str) -> torch.Tensor:
    """One photograph as 3×H×W float32 in [-1, 1]."""
    if name.startswith("motorcycle_"):
        img = skimage.data.stereo_motorcycle()[0 if name.endswith("left") else 1]
    else:
        img = getattr(skimage.data, name)()
    img = img.astype(np.float32) / (255.0 if img.max() > 1 else 1.0)
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    return torch.from_numpy(img).permute(2, 0, 1).contiguous() * 2 - 1


def crops(n: int, size: int = 32, seed: int = 0, max_zoom: float = 4.0) -> torch.Tensor:
    """n random square crops (side size·[1, max_zoom], resized to size×size) of random photographs:
    N×3×size×size in [-1, 1]. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        img = photo(PHOTOS[rng.integers(len(PHOTOS))])
        _, h, w = img.shape
        side = min(h, w, int(size * rng.uniform(1.0, max_zoom)))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        patch = img[None, :, y:y + side, x:x + side]
        if rng.random() < 0.5:
            patch = patch.flip(-1)
        out[i] = F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out
