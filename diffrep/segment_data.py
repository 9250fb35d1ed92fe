"""Segmentation data: the bundled `scenes` benchmark and user folders of images + integer masks.

A folder holds `images/` and `masks/` (PNG, one integer label per pixel, the same file stem) and
optionally `classes.json`: either a list of class names, or `{"names": [...], "ignore": 255}`.
Without `classes.json` the classes are 0..max label found, named by number, and nothing is ignored.
A folder with `train/` and `test/` sub-folders (each laid out as above) gives those splits; any other
folder serves every split whole (pass a separate folder to `eval`).

Decisions: images are kept at their own size (the features are upsampled to it), so every image of
a set must have the same size; masks are read as they are stored (never resized: a resize would
invent labels). Images are small next to their features, so a set's images sit in RAM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .data import IMAGE_SUFFIXES, read_image
from .errors import DiffrepError

MIN_TEST_SCENES = 200   # the bundled test set is at least this large
VAL_START = 1000        # bundled 'val' scenes: the scenes train split from this index on (never labelled)


@dataclass
class SegData:
    """Images (N×C×H×W float32 in [-1, 1]) with their masks (N×H×W int64)."""

    images: torch.Tensor
    masks: torch.Tensor
    classes: list[str]
    ignore_index: int | None = None
    name: str = ""

    def __len__(self) -> int:
        return len(self.images)


def load_seg_data(data: str, split: str, n: int | None = None, classes: list[str] | None = None,
                  ignore_index: int | None = None) -> SegData:
    """The first `n` labelled images of `split` ('train', 'val' or 'test') of `data` ('scenes' or a
    folder). `classes`/`ignore_index`, when given (from a trained run), are what the masks must keep to.
    'val' exists for the bundled scenes only (for a folder, pass a validation folder as the data)."""
    if split not in ("train", "val", "test"):
        raise DiffrepError(f"unknown split {split!r}; use 'train', 'val' or 'test'")
    if split == "val" and data != "scenes":
        raise DiffrepError("a 'val' split exists only for the bundled scenes; for your own data pass a "
                           "folder of validation images and masks as --data with the test split")
    if data == "scenes":
        out = _scenes(split, n)
    else:
        out = _folder(Path(data), split, n)
    if classes is not None:
        if ignore_index is None and out.ignore_index is not None:
            ignore_index = out.ignore_index
        _check_labels(out.masks, len(classes), ignore_index, f"{data} ({split})")
        out.classes, out.ignore_index = classes, ignore_index
    return out


def _scenes(split: str, n: int | None) -> SegData:
    from .scenes import CLASSES, scenes

    n = n if n is not None else (20 if split == "train" else MIN_TEST_SCENES)
    if n < 1:
        raise DiffrepError(f"asked for {n} labelled scenes; ask for at least 1")
    if split == "train" and n > VAL_START:
        raise DiffrepError(f"at most {VAL_START} labelled scenes (later train-split scenes are the validation set)")
    # validation scenes come from the train split (train digits, left ¾ of each texture), past the labelled ones
    images, masks = scenes("train", n, start=VAL_START) if split == "val" else scenes(split, n)
    return SegData(images, masks, list(CLASSES), None, f"scenes/{split}")


def _split_root(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise DiffrepError(f"segmentation data folder {root} does not exist or is not a folder")
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root / split
    return root


def _files(folder: Path, what: str, root: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DiffrepError(f"{root} has no {what}/ folder; a segmentation folder holds images/ and masks/")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    if not files:
        raise DiffrepError(f"{folder} is empty: no image files found")
    return files


def _pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by file stem; any image or mask without its partner is an error."""
    images, masks = _files(root / "images", "images", root), _files(root / "masks", "masks", root)
    lone_images, lone_masks = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if lone_images:
        raise DiffrepError(f"{len(lone_images)} image(s) in {root / 'images'} have no mask in {root / 'masks'} "
                           f"(same stem expected): {', '.join(lone_images[:5])}")
    if lone_masks:
        raise DiffrepError(f"{len(lone_masks)} mask(s) in {root / 'masks'} have no image in {root / 'images'}: "
                           f"{', '.join(lone_masks[:5])}")
    return [(images[s], masks[s]) for s in sorted(images)]


def read_mask(path: Path) -> torch.Tensor:
    """An integer label mask (H×W int64). Palette PNGs give their indices, grey PNGs their values."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "1"):
                raise DiffrepError(f"mask {path} is a {im.mode} image; masks must hold one integer label per "
                                   "pixel (8/16-bit grey or palette PNG)")
            arr = np.array(im, dtype=np.int64)
    except (UnidentifiedImageError, OSError) as err:
        raise DiffrepError(f"cannot read mask {path}: {err}") from err
    return torch.from_numpy(arr)


def _read_classes(root: Path, masks: torch.Tensor) -> tuple[list[str], int | None]:
    path = next((p / "classes.json" for p in (root, root.parent) if (p / "classes.json").is_file()), None)
    if path is None:   # no declaration: the labels found are the classes
        return [str(c) for c in range(int(masks.max()) + 1)], None
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DiffrepError(f"{path} is not valid JSON: {err}") from err
    if isinstance(spec, list):
        spec = {"names": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("names"), list) or not spec["names"]:
        raise DiffrepError(f"{path} must be a list of class names or {{\"names\": [...], \"ignore\": label}}")
    ignore = spec.get("ignore")
    if ignore is not None and not isinstance(ignore, int):
        raise DiffrepError(f"{path}: 'ignore' must be an integer label, got {ignore!r}")
    return [str(n) for n in spec["names"]], ignore


def _check_labels(masks: torch.Tensor, n_classes: int, ignore: int | None, where: str) -> None:
    values = torch.unique(masks)
    bad = [int(v) for v in values if not (0 <= v < n_classes or v == ignore)]
    if bad:
        raise DiffrepError(f"masks of {where} hold label(s) {bad[:8]} outside the declared classes 0..{n_classes - 1}"
                           + (f" (ignore label {ignore})" if ignore is not None else "")
                           + "; fix the masks or classes.json")


def _folder(root: Path, split: str, n: int | None) -> SegData:
    split_root = _split_root(root, split)
    pairs = _pairs(split_root)
    if n is not None and n > len(pairs):
        raise DiffrepError(f"asked for {n} labelled images but {split_root} holds only {len(pairs)}")
    pairs = pairs[:n] if n is not None else pairs
    images, masks = [], []
    for image_path, mask_path in pairs:
        image, mask = read_image(image_path, 3, None)[0], read_mask(mask_path)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DiffrepError(f"mask {mask_path} is {mask.shape[0]}×{mask.shape[1]} but its image {image_path} is "
                               f"{image.shape[-2]}×{image.shape[-1]}; a mask must match its image pixel for pixel")
        images.append(image)
        masks.append(mask)
    sizes = sorted({tuple(m.shape) for m in masks})
    if len(sizes) > 1:
        raise DiffrepError(f"images in {split_root} have different sizes {sizes[:4]}; resize them (and their masks, "
                           "nearest-neighbour) to one size")
    masks_t = torch.stack(masks)
    classes, ignore = _read_classes(split_root, masks_t)
    _check_labels(masks_t, len(classes), ignore, str(split_root))
    return SegData(torch.stack(images), masks_t, classes, ignore, str(split_root))
