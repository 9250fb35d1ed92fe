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


# ----------------------------------------------------------------------------- labelled crops

# Each photograph is cut into a GRID×GRID grid of tiles, and the tiles are dealt to the splits by a
# seeded permutation per photograph; a crop lies inside one tile, so no pixel of a test crop is in
# any train or validation crop. Classifying a crop by its photograph then means recognising the same
# scene's other regions: texture, colour and objects seen elsewhere in it.
GRID = 4
TILES_PER_SPLIT = {"train": 10, "val": 3, "test": 3}
CROPS_PER_PHOTO = {"train": 200, "val": 30, "test": 60}
TILE_SEED = 0


def split_tiles(name: str, split: str) -> list[tuple[int, int, int, int]]:
    """The tiles (y0, y1, x0, x1) of photograph `name` that belong to `split`."""
    _, h, w = photo(name).shape
    order = np.random.default_rng([TILE_SEED, PHOTOS.index(name)]).permutation(GRID * GRID)
    start = 0
    for s, count in TILES_PER_SPLIT.items():
        if s == split:
            picked = sorted(order[start:start + count])
            break
        start += count
    else:
        raise ValueError(f"unknown split {split!r}")
    ys, xs = np.linspace(0, h, GRID + 1).astype(int), np.linspace(0, w, GRID + 1).astype(int)
    return [(ys[k // GRID], ys[k // GRID + 1], xs[k % GRID], xs[k % GRID + 1]) for k in picked]


@lru_cache(maxsize=None)
def labelled_crops(split: str, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of `split` labelled by their photograph: (N×3×size×size in [-1, 1], N labels indexing
    PHOTOS). Each crop is a square of side size·[1, 2] (at most its tile's short side) inside one of
    the split's tiles, flipped at random, resized to size×size. Deterministic."""
    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        img, tiles = photo(name), split_tiles(name, split)
        rng = np.random.default_rng([TILE_SEED, label, list(TILES_PER_SPLIT).index(split)])
        for _ in range(CROPS_PER_PHOTO[split]):
            y0, y1, x0, x1 = tiles[rng.integers(len(tiles))]
            side = int(rng.integers(min(size, y1 - y0, x1 - x0), min(2 * size, y1 - y0, x1 - x0) + 1))
            y, x = y0 + rng.integers(0, y1 - y0 - side + 1), x0 + rng.integers(0, x1 - x0 - side + 1)
            patch = img[None, :, y:y + side, x:x + side]
            if rng.random() < 0.5:
                patch = patch.flip(-1)
            images.append(F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)[0])
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)
