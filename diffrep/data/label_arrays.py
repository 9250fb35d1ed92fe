"""DDPM-Seg's data layout: each image beside a same-stem `.npy` label array, read as its reference does.

    <set>/real/train/image_0.png  <set>/real/train/image_0.npy  …   (labelled training images)
    <set>/real/test/image_0.jpg   <set>/real/test/image_0.npy   …   (test images)

Images are listed in sorted order (one folder deep); each one's labels are at its path with the
suffix replaced by `.npy`. Given the model's side, an image is converted to RGB and resized to
side×side bilinearly, its labels nearest-neighbour, output pixel i taking input pixel ⌊i·H/side⌋
(OpenCV's INTER_NEAREST, which the reference uses), so that no label is invented.

Decisions: a label array must be 2-D, hold integers (a float array holding whole numbers is read too:
the reference casts whatever it finds to integers) and be its image's size; an image without its
`.npy` is an error, a `.npy` without an image is not read (as the reference). Images are resized
only when square (the reference refuses any other).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DiffrepError
from .images import _header_size, as_tensor, list_images


def is_array_folder(folder: Path) -> bool:
    """Whether `folder` holds `.npy` label arrays beside its images (DDPM-Seg's layout)."""
    return folder.is_dir() and any(folder.glob("*.npy"))


def array_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(image, label array) paths of a folder in DDPM-Seg's layout, sorted by image path."""
    images = list_images(folder, recursive=False)
    if not images:
        raise DiffrepError(f"{folder} holds .npy label arrays but no image files")
    lone = [p.name for p in images if not p.with_suffix(".npy").is_file()]
    if lone:
        raise DiffrepError(f"{len(lone)} image(s) in {folder} have no .npy label array beside them (same stem "
                           f"expected): {', '.join(lone[:5])}")
    return [(p, p.with_suffix(".npy")) for p in images]


def read_label_array(path: Path) -> np.ndarray:
    """A `.npy` label array as H×W int64, refused unless it is 2-D and holds integers."""
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DiffrepError(f"cannot read label array {path}: {err}") from None
    whole = labels.dtype.kind in "biu" or (labels.dtype.kind == "f" and np.isfinite(labels).all()
                                           and (labels == np.round(labels)).all())
    if labels.ndim != 2 or not whole:
        raise DiffrepError(f"label array {path} holds a {labels.ndim}-D {labels.dtype} array of shape {labels.shape}; "
                           "it must be a 2-D integer array, one class label per pixel")
    return labels.astype(np.int64)


def _check_fit(labels: np.ndarray, path: Path, image_path: Path, image_hw: tuple[int, int], side: int | None) -> None:
    if labels.shape != image_hw:
        raise DiffrepError(f"label array {path} is {labels.shape[0]}×{labels.shape[1]} but its image {image_path} is "
                           f"{image_hw[0]}×{image_hw[1]}; a label array must match its image pixel for pixel")
    if side is not None and image_hw != (side, side) and image_hw[0] != image_hw[1]:
        raise DiffrepError(f"image {image_path} is {image_hw[0]}×{image_hw[1]}: DDPM-Seg's layout resizes images to "
                           f"the model's {side}×{side}, which needs square images (crop them first)")


def nearest(labels: np.ndarray, side: int) -> np.ndarray:
    """H×W labels resized to side×side nearest-neighbour: output pixel i takes input pixel ⌊i·H/side⌋."""
    rows = np.arange(side) * labels.shape[0] // side
    cols = np.arange(side) * labels.shape[1] // side
    return labels[rows[:, None], cols[None, :]]


def read_array_image(path: Path, side: int | None) -> torch.Tensor:
    """An image of DDPM-Seg's layout as 3×H×W in [-1, 1], resized bilinearly to side×side (None: as it is)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise DiffrepError(f"cannot read image {path}: {err}") from None
    if side is not None and im.size != (side, side):
        im = im.resize((side, side), Image.BILINEAR)
    return as_tensor(im)


def read_array_labels(path: Path, image_path: Path, side: int | None) -> torch.Tensor:
    """The label array of `image_path`, checked against the image's size and resized as the image is."""
    labels = read_label_array(path)
    width, height = _header_size(image_path)
    _check_fit(labels, path, image_path, (height, width), side)
    return torch.from_numpy(labels if side is None or labels.shape == (side, side) else nearest(labels, side))
