"""Correspondence benchmarks: the `warps` pairs, the SPair-71k reader, PCK, and the classical baselines.

- `warps`: scikit-image's real photographs (photos.PHOTOS) under random homographies, half of them
  also under a thin-plate-spline warp, with photometric jitter on the target. The warp is defined as
  the map *from target to source* (what `skimage.transform.warp` needs), so ground truth is exact:
  keypoints are drawn in the target and their source positions computed; only those whose source lies
  inside the source image are kept. PCK threshold: α·max(image h, w) (the images have no boxes).
- `geo`: the same construction on real images no bundled model saw (photos.UNSEEN), under much
  stronger geometry: rotation ±90°, scale change ×0.5–×2 (log-uniform), shift ±10%, and a mild
  perspective (corners ±5%), so keypoints move far. Each image is sampled from a copy of the photograph
  at its own resolution (a zoomed-out target would alias if sampled from the source's); where the
  target sees past the photograph's edge it is grey, not mirrored, as a mirror would offer
  lookalikes of the keypoints. Keypoints lie inside the source crop, hence on the photograph in both
  images. The photometric jitter is drawn last, so a pair without it (`jitter=False`) has the same
  geometry and keypoints: the check that the ground truth is exact.
- SPair-71k: `PairAnnotation/<split>/*.json` + `JPEGImages/<category>/`; PCK threshold α·max(h, w) of
  the target box (`trg_bndbox`), as DIFT reports. PCK is given per point (all keypoints pooled) and
  per image (the mean over pairs of each pair's fraction).

Splits are named as everywhere else (train, val, test; SPair's own folder names trn, val, test are
accepted too). The warps are drawn from a seed: `--seed 1` gives the validation warps on which every
DIFT default was chosen, seed 0 the evaluated ones; the same for `geo`.
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
from .photos import PHOTOS, UNSEEN, photo

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


# ----------------------------------------------------------------------------- shared warp machinery

def _random_homography(rng: np.random.Generator, size: int, angle: float = 20, scale: tuple = (0.8, 1.25),
                       shift: float = 0.08, corners: float = 0.08):
    """Source → target: rotation ±angle°, scale log-uniform in `scale`, shift ±shift·size, then each
    corner jittered ±corners·size (perspective). The defaults are the warps benchmark's."""
    square = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], dtype=float)
    centre = square.mean(0)
    theta, zoom = np.deg2rad(rng.uniform(-angle, angle)), np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1])))
    rot = zoom * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    moved = (square - centre) @ rot.T + centre + rng.uniform(-shift, shift, 2) * size
    moved += rng.uniform(-corners, corners, (4, 2)) * size
    return ProjectiveTransform.from_estimate(square, moved)


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


def _rescaled(full: torch.Tensor, factor: float) -> np.ndarray:
    """A photograph (3×H×W in [-1, 1]) resized by `factor` with antialiasing, as H'×W'×3 float64 in
    [0, 1]. Its pixel centres map back exactly: pixel i lies at (i + 0.5) / factor − 0.5 of the photograph."""
    scaled = F.interpolate(full[None], scale_factor=factor, mode="bilinear", antialias=True,
                           align_corners=False, recompute_scale_factor=False)[0]
    return (scaled.permute(1, 2, 0).numpy().astype(np.float64) + 1) / 2


def _keypoints(rng: np.random.Generator, to_source, size: int, keypoints: int, draws: int = 8):
    """Up to `keypoints` points drawn uniformly in the target whose source positions fall inside the
    source image: (source K×2, target K×2). `draws` candidates per wanted point are tried."""
    drawn = rng.uniform(0, size - 1, (draws * keypoints, 2))
    back = to_source(drawn)
    inside = ((back >= 0) & (back <= size - 1)).all(1)
    return back[inside][:keypoints], drawn[inside][:keypoints]


def _pair(name: str, source: np.ndarray, target: np.ndarray, points: tuple, size: int) -> Pair:
    """A Pair of two H×W×3 [0, 1] images and their (source, target) keypoints; PCK threshold: the side."""
    as_image = lambda a: torch.from_numpy(a).permute(2, 0, 1).float().contiguous() * 2 - 1  # noqa: E731
    src_kps, tgt_kps = points
    return Pair(name, as_image(source), as_image(target), torch.from_numpy(src_kps).float(),
                torch.from_numpy(tgt_kps).float(), float(size))


def _check_pairs(benchmark: str, n: int, size: int) -> None:
    if n < 1 or size < 16:
        raise DiffrepError(f"{benchmark} needs at least 1 pair and size ≥ 16, got {n} pairs of {size}×{size}")


# ----------------------------------------------------------------------------- warps

def warp_pair(index: int, size: int = 128, seed: int = 0, keypoints: int = 20) -> Pair:
    """Pair `index` of the warps benchmark: a random crop of a photograph, and the same scene warped."""
    rng = np.random.default_rng([seed, index])
    name = PHOTOS[index % len(PHOTOS)]
    full = photo(name)
    side = rng.uniform(0.35, 0.8) * min(full.shape[-2:])
    # Rescale the photograph so the crop is size×size at scale 1: the warp then samples without aliasing.
    scaled = _rescaled(full, size / side)
    x0, y0 = rng.integers(0, scaled.shape[1] - size + 1), rng.integers(0, scaled.shape[0] - size + 1)
    to_source = _random_homography(rng, size).inverse
    if index % 2:  # odd pairs: a thin-plate bend on top of the homography
        bend = _random_tps(rng, size)
        to_source = (lambda h, b: lambda xy: h(b(xy)))(to_source, bend)
    target = warp(scaled, lambda xy: to_source(xy) + [x0, y0], output_shape=(size, size), order=1, mode="reflect")
    target = _photometric(target, rng)
    source = scaled[y0:y0 + size, x0:x0 + size]
    return _pair(f"warp{index:03d}-{name}", source, target, _keypoints(rng, to_source, size, keypoints), size)


def warp_pairs(n: int = 120, size: int = 128, seed: int = 0, keypoints: int = 20) -> list[Pair]:
    """The warps benchmark: n fixed pairs (deterministic for a seed), size×size images."""
    _check_pairs("warps", n, size)
    return [warp_pair(i, size, seed, keypoints) for i in range(n)]


# ----------------------------------------------------------------------------- geo

GEO_ANGLE, GEO_SCALE, GEO_SHIFT, GEO_CORNERS = 90, (0.5, 2.0), 0.1, 0.05   # see the module docstring
GEO_SIDE = (0.3, 0.6)   # source crop side, as a fraction of the photograph's short side
GEO_DRAWS = 32          # keypoint candidates per wanted point: a zoomed-out target shows the source in ¼ of it
GEO_FILL = 0.5          # grey (0 in [-1, 1]) where the target sees past the photograph
GEO_STREAM = 1          # third seed word: geo's draws are unrelated to the warps' ([seed, index])


def _zoom(transform, size: int) -> float:
    """The mean linear scale of a homography over the size×size square: √(area of its image / size²)."""
    x, y = transform(np.array([[0, 0], [size, 0], [size, size], [0, size]], dtype=float)).T
    return float(np.sqrt(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2) / size)


def geo_pair(index: int, size: int = 128, seed: int = 0, keypoints: int = 20, jitter: bool = True) -> Pair:
    """Pair `index` of the geo benchmark: a random crop of an unseen photograph, and the scene rotated,
    zoomed and tilted. `jitter` False leaves out the photometric jitter (same geometry and keypoints)."""
    rng = np.random.default_rng([seed, index, GEO_STREAM])
    name = UNSEEN[index % len(UNSEEN)]
    full = photo(name)
    factor = size / (rng.uniform(*GEO_SIDE) * min(full.shape[-2:]))
    scaled = _rescaled(full, factor)
    x0, y0 = rng.integers(0, scaled.shape[1] - size + 1), rng.integers(0, scaled.shape[0] - size + 1)
    to_target = _random_homography(rng, size, GEO_ANGLE, GEO_SCALE, GEO_SHIFT, GEO_CORNERS)
    to_source = to_target.inverse
    # The target's own copy: downsampled with antialiasing when it is coarser than the photograph,
    # else the photograph itself (interpolated once, by the warp).
    own = min(factor * _zoom(to_target, size), 1.0)
    copy = _rescaled(full, own)
    in_copy = lambda xy: (to_source(xy) + [x0, y0] + 0.5) * (own / factor) - 0.5  # noqa: E731
    target = warp(copy, in_copy, output_shape=(size, size), order=1, mode="constant", cval=GEO_FILL)
    points = _keypoints(rng, to_source, size, keypoints, GEO_DRAWS)
    if jitter:
        target = _photometric(target, rng)
    source = scaled[y0:y0 + size, x0:x0 + size]
    return _pair(f"geo{index:03d}-{name}", source, target, points, size)


def geo_pairs(n: int = 120, size: int = 128, seed: int = 0, keypoints: int = 20) -> list[Pair]:
    """The geo benchmark: n fixed pairs (deterministic for a seed), size×size images."""
    _check_pairs("geo", n, size)
    return [geo_pair(i, size, seed, keypoints) for i in range(n)]


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

