"""The real photographs bundled with scikit-image (and two of matplotlib's), as a natural-image domain:
random crops for pre-training (`diffrep pretrain --data photos`) and whole images for correspondence
benchmarks.

PHOTOS are the pre-training photographs (and the warps benchmark's). UNSEEN are the real images that
load offline and that no bundled model saw, for the `geo` benchmark. They come from scikit-image and
from matplotlib's sample data (both declared dependencies, both read from the installed package):
- kept: `grace_hopper` (matplotlib's `grace_hopper.jpg`, 600×512: an official portrait photograph, face,
  flag, uniform and medals; the natural photograph of the set), `terrain` (matplotlib's
  `jacksboro_fault_dem.npz`, 344×403: the elevation of a Tennessee valley shaded as by a sun from the
  north-west at 45°, `LightSource.hillshade` at true relief, the cells' degrees turned into metres as
  matplotlib's own example does; rendered, not photographed, but of measured ground, so it looks like a
  low-sun aerial photograph: dense natural texture everywhere, ridges that resemble each other, and a
  shading that turns with the image under rotation as a photograph's would), `text` (scikit-image: handwritten
  formulae on paper, photographed at a slant; strokes, paper grain, shading; half its keypoints land on
  blank paper), `page` (scikit-image: a photographed printed page; type, uneven lighting).
- left out, matplotlib: `Minduka_Present_Blue_Pack.png` (a 128×128 clip-art gift box, drawn, not
  photographed: flat fills and gradients on a transparent ground, and a geo crop of it is magnified
  2–3×), the terrain in colour (`LightSource.shade` with a colormap: the colours encode height by an
  arbitrary map), `s1045.ima.gz` (a 256×256 MR scan of a head, raw uint16: not a photograph, more than
  half of it black), `logo2.png` (matplotlib's logo), `topobathy.npz` (91×120 elevations: too small).
- left out, scikit-image: `cell` (a quantitative-phase microscope image, one bright cell on a faint
  speckle: most crops miss the cell, and 85% of their keypoints lie on near-uniform background).
- left out, seen in pre-training: `cat` is `chelsea` (the same array), `stereo_motorcycle` gives the two
  motorcycle photographs, and `retina`, `moon`, `clock`, `brick`, `grass`, `gravel` are in PHOTOS.
- left out, too small: `microaneurysms` (102×102, and a retina detail like `retina`), `lfw_subset`
  (25×25 faces).
- left out, synthetic or binary: `colorwheel`, `logo`, `horse` (a silhouette), `checkerboard`,
  `binary_blobs`, `shepp_logan_phantom`.
- left out, need a download (pooch and the network): `eagle`, `lily`, `skin`, `kidney`, `brain`,
  `cells3d`, `human_mitosis`, `nickel_solidification`, `palisades_of_vogt`, `protein_transport`, `vortex`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import skimage.data
from matplotlib import cbook
from matplotlib.colors import LightSource
import torch
import torch.nn.functional as F
from PIL import Image

# Photographs of scenes and objects (grey ones are repeated into RGB); textures and synthetic images left out.
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
          "retina", "moon", "coins", "clock", "brick", "grass", "gravel", "motorcycle_left", "motorcycle_right")
# Real images no bundled model was trained on (see the module docstring for why these four), in the
# order the geo pairs cycle through them: a few pairs already cover both sources.
UNSEEN = ("grace_hopper", "terrain", "text", "page")


def _matplotlib_sample(name: str) -> str:
    """The path of a file of matplotlib's sample data (installed with it; no network)."""
    return str(cbook.get_sample_data(name, asfileobj=False))


def _terrain() -> np.ndarray:
    """matplotlib's Jacksboro fault elevations hill-shaded at true relief: H×W float in [0, 1]."""
    with np.load(_matplotlib_sample("jacksboro_fault_dem.npz")) as dem:
        # The cells are given in degrees; the gradient needs them in metres, as the elevations are.
        dy = 111_200 * float(dem["dy"])
        dx = 111_200 * float(dem["dx"]) * np.cos(np.radians(float(dem["ymin"])))
        return LightSource(azdeg=315, altdeg=45).hillshade(dem["elevation"].astype(np.float64), dx=dx, dy=dy)


def _array(name: str) -> np.ndarray:
    """Image `name` as it is stored: H×W or H×W×C, uint8 or float in [0, 1]."""
    if name.startswith("motorcycle_"):
        return skimage.data.stereo_motorcycle()[0 if name.endswith("left") else 1]
    if name == "grace_hopper":
        with Image.open(_matplotlib_sample("grace_hopper.jpg")) as im:
            return np.asarray(im.convert("RGB"))
    if name == "terrain":
        return _terrain()
    return getattr(skimage.data, name)()


@lru_cache(maxsize=None)
def photo(name: str) -> torch.Tensor:
    """One photograph (scikit-image's, or one of UNSEEN) as 3×H×W float32 in [-1, 1]."""
    img = _array(name)
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
