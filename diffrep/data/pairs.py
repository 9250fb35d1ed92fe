"""Correspondence benchmarks: the `warps` pairs, the SPair-71k reader, PCK, and the classical baselines.

- `warps`: scikit-image's real photographs (photos.PHOTOS) under random homographies, half of them
  also under a thin-plate-spline warp, with photometric jitter on the target. The warp is defined as
  the map *from target to source* (what `skimage.transform.warp` needs), so ground truth is exact:
  keypoints are drawn in the target and their source positions computed; only those whose source lies
  inside the source image are kept. PCK threshold: α·max(image h, w) (the images have no boxes).
- SPair-71k: `PairAnnotation/<split>/*.json` + `JPEGImages/<category>/`; PCK threshold α·max(h, w) of
  the target box (`trg_bndbox`), as DIFT reports. PCK is given per point (all keypoints pooled) and
  per image (the mean over pairs of each pair's fraction).

Splits are named as everywhere else (train, val, test; SPair's own folder names trn, val, test are
accepted too). The warps are drawn from a seed: `--seed 1` gives the validation warps on which every
DIFT default was chosen, seed 0 the evaluated ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import ProjectiveTransform, ThinPlateSplineTransform, warp

from ..errors import DiffrepError
from .images import read_image
from .photos import PHOTOS, photo

SPAIR_SPLITS = {"train": "trn", "val": "val", "test": "test", "trn": "trn"}


# ----------------------------------------------------------------------------- pairs

@dataclass
class Pair:
    """Two images with ground-truth keypoints (K×2, x y, in each image's own pixels)."""

    name: str
    source: torch.Tensor | Path   # 3×H×W in [-1, 1], or an image file read on demand
    target: torch.Tensor | Path
    source_points: torch.Tensor
    target_points: torch.Tensor
    threshold_size: float         # PCK@α counts a match correct within α·threshold_size pixels
    category: str | None = None

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(im if isinstance(im, torch.Tensor) else read_image(im, 3, None)[0]
                     for im in (self.source, self.target))


# ----------------------------------------------------------------------------- warps

def _random_homography(rng: np.random.Generator, size: int):
    """Source → target: rotation ±20°, scale 0.8–1.25, shift ±8%, each corner jittered ±8% (perspective)."""
    corners = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], dtype=float)
    centre = corners.mean(0)
    angle, scale = np.deg2rad(rng.uniform(-20, 20)), np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (corners - centre) @ rot.T + centre + rng.uniform(-0.08, 0.08, 2) * size
    moved += rng.uniform(-0.08, 0.08, (4, 2)) * size
    return ProjectiveTransform.from_estimate(corners, moved)


def _random_tps(rng: np.random.Generator, size: int):
    """Target → target: a 4×4 grid of control points each displaced by N(0, (4% of size)²)."""
    g = np.linspace(0, size - 1, 4)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    return ThinPlateSplineTransform.from_estimate(grid, grid + rng.normal(0, 0.04 * size, grid.shape))


def _photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast ×0.8–1.2, brightness ±0.1, per-channel gain ±5%, noise σ 0.01 (images in [0, 1])."""
    out = (image - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.1, 0.1)
    out = out * rng.uniform(0.95, 1.05, 3) + rng.normal(0, 0.01, image.shape)
    return np.clip(out, 0, 1)


def warp_pair(index: int, size: int = 128, seed: int = 0, keypoints: int = 20) -> Pair:
    """Pair `index` of the warps benchmark: a random crop of a photograph, and the same scene warped."""
    rng = np.random.default_rng([seed, index])
    name = PHOTOS[index % len(PHOTOS)]
    full = photo(name)
    side = rng.uniform(0.35, 0.8) * min(full.shape[-2:])
    # Rescale the photograph so the crop is size×size at scale 1: the warp then samples without aliasing.
    scaled = F.interpolate(full[None], scale_factor=size / side, mode="bilinear", antialias=True,
                           align_corners=False, recompute_scale_factor=False)[0]
    scaled = (scaled.permute(1, 2, 0).numpy().astype(np.float64) + 1) / 2
    x0, y0 = rng.integers(0, scaled.shape[1] - size + 1), rng.integers(0, scaled.shape[0] - size + 1)
    to_source = _random_homography(rng, size).inverse
    if index % 2:  # odd pairs: a thin-plate bend on top of the homography
        bend = _random_tps(rng, size)
        to_source = (lambda h, b: lambda xy: h(b(xy)))(to_source, bend)
    target = warp(scaled, lambda xy: to_source(xy) + [x0, y0], output_shape=(size, size), order=1, mode="reflect")
    target = _photometric(target, rng)
    source = scaled[y0:y0 + size, x0:x0 + size]

    drawn = rng.uniform(0, size - 1, (8 * keypoints, 2))
    back = to_source(drawn)
    inside = ((back >= 0) & (back <= size - 1)).all(1)
    src_kps, tgt_kps = back[inside][:keypoints], drawn[inside][:keypoints]
    as_image = lambda a: torch.from_numpy(a).permute(2, 0, 1).float().contiguous() * 2 - 1  # noqa: E731
    return Pair(f"warp{index:03d}-{name}", as_image(source), as_image(target), torch.from_numpy(src_kps).float(),
                torch.from_numpy(tgt_kps).float(), float(size))


def warp_pairs(n: int = 120, size: int = 128, seed: int = 0, keypoints: int = 20) -> list[Pair]:
    """The warps benchmark: n fixed pairs (deterministic for a seed), size×size images."""
    if n < 1 or size < 16:
        raise DiffrepError(f"warps needs at least 1 pair and size ≥ 16, got {n} pairs of {size}×{size}")
    return [warp_pair(i, size, seed, keypoints) for i in range(n)]


# ----------------------------------------------------------------------------- SPair-71k

SPAIR_KEYS = ("src_imname", "trg_imname", "src_kps", "trg_kps", "trg_bndbox", "category")


def _spair_pair(file: Path, images: Path) -> Pair:
    try:
        ann = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DiffrepError(f"cannot read SPair annotation {file}: {err}") from err
    missing = [k for k in SPAIR_KEYS if k not in ann]
    if missing:
        raise DiffrepError(f"SPair annotation {file} lacks {', '.join(missing)}")
    src_kps = torch.tensor(ann["src_kps"], dtype=torch.float32).view(-1, 2)
    trg_kps = torch.tensor(ann["trg_kps"], dtype=torch.float32).view(-1, 2)
    if len(src_kps) != len(trg_kps) or not len(src_kps):
        raise DiffrepError(f"SPair annotation {file}: {len(src_kps)} source but {len(trg_kps)} target keypoints")
    x1, y1, x2, y2 = (float(v) for v in ann["trg_bndbox"])
    folder = images / ann["category"]
    return Pair(file.stem, folder / ann["src_imname"], folder / ann["trg_imname"], src_kps, trg_kps,
                max(x2 - x1, y2 - y1), ann["category"])


def spair_pairs(root: str | Path, split: str = "test", limit: int | None = None) -> list[Pair]:
    """The pairs of one SPair-71k split (train, val, test; or SPair's names trn, val, test). With `limit`, that many pairs spread
    evenly over the sorted list (files are sorted by category, so the first N would be one category).
    Every image file is checked before any work starts."""
    root = Path(root)
    if split not in SPAIR_SPLITS:
        raise DiffrepError(f"unknown SPair split {split!r}; use train, val or test")
    split = SPAIR_SPLITS[split]
    ann_dir, images = root / "PairAnnotation" / split, root / "JPEGImages"
    if not (root / "PairAnnotation").is_dir() or not images.is_dir():
        raise DiffrepError(f"{root} is not an SPair-71k folder: it needs PairAnnotation/ and JPEGImages/")
    if not ann_dir.is_dir():
        have = sorted(p.name for p in (root / "PairAnnotation").iterdir() if p.is_dir())
        raise DiffrepError(f"SPair split {split!r} not found in {root / 'PairAnnotation'}; "
                           f"splits there: {', '.join(have) or 'none'}")
    files = sorted(ann_dir.glob("*.json"))
    if not files:
        raise DiffrepError(f"{ann_dir} holds no *.json pair annotations")
    if limit is not None and limit < len(files):
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, max(1, limit)).round()]
    pairs = [_spair_pair(f, images) for f in files]
    absent = sorted({str(p) for pair in pairs for p in (pair.source, pair.target) if not p.is_file()})
    if absent:
        raise DiffrepError(f"{len(absent)} image(s) named in {ann_dir} are missing, e.g. {', '.join(absent[:3])}")
    return pairs

