"""Segmentation data: the bundled `scenes` and user folders of images + integer masks.

A folder holds `images/` and `masks/` (PNG, one integer label per pixel, the same file stem) and
optionally `classes.json`: `{"classes": ["background", "cat", ...], "ignore_index": 255}` (or just
the list of names). Without `classes.json` the classes are 0..max label found, named by number, and
nothing is ignored. A folder with `train/`, `test/` (and optionally `val/`) sub-folders, each laid
out as above, gives those splits. Any other folder serves every split whole: scoring it after
training on it scores the training images, so a warning says so (pass a separate folder to `eval`).
DDPM-Seg's layout is read too (`label_arrays`): a folder of images each beside a same-stem `.npy`
label array, and its data set roots, whose `real/train` and `real/test` are the splits.

Decisions: images are kept at their own size (the features are upsampled to it), so every image of
a set must have the same size; masks are read as they are stored (never resized: a resize would
invent labels). DDPM-Seg's layout is read as its reference reads it: given the model's side (`side`),
images are resized bilinearly and labels nearest-neighbour to it. Training sets (the few labelled
images) sit in RAM; a set being scored is read image by image (`load_seg_data(..., lazy=True)`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DiffrepError
from .images import ImageFiles, ImageSet, list_images, read_image
from .label_arrays import array_pairs, is_array_folder, read_array_image, read_array_labels
from .scenes import CLASSES, scenes

MIN_TEST_SCENES = 200   # the bundled test set is at least this large
VAL_START = 1000        # bundled 'val' scenes: the scenes train split from this index on (never labelled)
LABELLED_SCENES = 20    # the bundled scenes' default number of labelled training images
SPLITS = ("train", "val", "test")


def load_seg_data(data: str, split: str, n: int | None = None, classes: list[str] | None = None,
                  ignore_index: int | None = None, lazy: bool = False, side: int | None = None) -> ImageSet:
    """The first `n` labelled images of `split` ('train', 'val' or 'test') of `data` ('scenes' or a
    folder). `classes`/`ignore_index`, when given (from a trained run), are what the masks must keep to.
    'val' exists for the bundled scenes only (for a folder, pass a validation folder as the data).
    lazy (with `classes`): a folder's images and masks are read as they are used (`ImageFiles`,
    `MaskFiles`: scoring a large test folder holds one batch), each mask checked when it is read.
    side: the model's; DDPM-Seg's layout is resized to side×side (other folders keep their size)."""
    if split not in SPLITS:
        raise DiffrepError(f"unknown split {split!r}; use 'train', 'val' or 'test'")
    if data == "scenes":
        out = _scenes(split, n)
    elif lazy and classes is not None:   # each mask is checked as it is read
        return _lazy_folder(Path(data), split, n, classes, ignore_index, side)
    else:
        out = _folder(Path(data), split, n, side)
    if classes is not None:
        if ignore_index is None and out.ignore_index is not None:
            ignore_index = out.ignore_index
        _check_labels(out.masks, len(classes), ignore_index, f"{data} ({split})")
        out.classes, out.ignore_index = classes, ignore_index
    return out


def _scenes(split: str, n: int | None) -> ImageSet:
    n = n if n is not None else (LABELLED_SCENES if split == "train" else MIN_TEST_SCENES)
    if n < 1:
        raise DiffrepError(f"asked for {n} labelled scenes; ask for at least 1")
    if split == "train" and n > VAL_START:
        raise DiffrepError(f"at most {VAL_START} labelled scenes (later train-split scenes are the validation set)")
    # validation scenes come from the train split (train digits, left ¾ of each texture), past the labelled ones
    images, masks = scenes("train", n, start=VAL_START) if split == "val" else scenes(split, n)
    return ImageSet(images, classes=list(CLASSES), name=f"scenes/{split}", masks=masks)


def is_seg_folder(root: Path) -> bool:
    """Whether a folder is laid out for segmentation (images/ + masks/ or images beside .npy label
    arrays, or split folders holding them)."""
    root = _data_root(root)
    return any((r / "masks").is_dir() or is_array_folder(r) for r in (root, root / "train"))


def declares_classes(data: str) -> bool:
    """Whether `data` names its classes itself: the bundled scenes, or a folder with classes.json."""
    return data == "scenes" or _has_classes_file(_split_root(Path(data), "train"))


def _data_root(root: Path) -> Path:
    """The folder holding the splits: a DDPM-Seg data set root's `real/`, else the folder itself."""
    real = root / "real"
    return real if (real / "train").is_dir() and (real / "test").is_dir() else root


def _split_root(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise DiffrepError(f"segmentation data folder {root} does not exist or is not a folder")
    root = _data_root(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        if not (root / split).is_dir():
            raise DiffrepError(f"{root} has no {split}/ folder; its splits: "
                               f"{', '.join(s for s in SPLITS if (root / s).is_dir())}")
        return root / split
    if split == "val":
        raise DiffrepError(f"{root} has no val/ folder: give it train/, val/ and test/ sub-folders (each with images/ "
                           "and masks/) for a validation split")
    if split != "train":
        print(f"warning: {root} has no train/ and test/ folders, so its {split} split is the whole folder; if you "
              "trained on it, this scores the training images: pass a separate folder of held-out images")
    return root


def _files(folder: Path, what: str, root: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DiffrepError(f"{root} has no {what}/ folder; a segmentation folder holds images/ and masks/, or images "
                           "each beside a same-stem .npy label array")
    files = {p.stem: p for p in list_images(folder, recursive=False)}
    if not files:
        raise DiffrepError(f"{folder} is empty: no image files found")
    return files


def _pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by file stem; any image or mask without its partner is an error.
    DDPM-Seg's layout: (image, .npy label array) pairs."""
    if is_array_folder(root) and not (root / "masks").is_dir():
        return array_pairs(root)
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
        spec = {"classes": spec}
    if isinstance(spec, dict):   # the keys of earlier versions ("names", "ignore") are still read
        spec = {"classes": spec.get("classes", spec.get("names")), "ignore_index": spec.get("ignore_index", spec.get("ignore"))}
    if not isinstance(spec, dict) or not isinstance(spec["classes"], list) or not spec["classes"]:
        raise DiffrepError(f"{path} must be {{\"classes\": [names...], \"ignore_index\": label}} or a list of class names")
    ignore = spec["ignore_index"]
    if ignore is not None and (not isinstance(ignore, int) or isinstance(ignore, bool)):
        raise DiffrepError(f"{path}: 'ignore_index' must be an integer label, got {ignore!r}")
    return [str(n) for n in spec["classes"]], ignore


def _check_labels(masks: torch.Tensor, n_classes: int, ignore: int | None, where: str) -> None:
    values = torch.unique(masks)
    bad = [int(v) for v in values if not (0 <= v < n_classes or v == ignore)]
    if bad:
        raise DiffrepError(f"masks of {where} hold label(s) {bad[:8]} outside the declared classes 0..{n_classes - 1}"
                           + (f" (ignore label {ignore})" if ignore is not None else "")
                           + "; fix the masks or classes.json")


class MaskFiles:
    """Mask files as a lazy sequence of H×W int64 label maps, each checked against the classes when read."""

    def __init__(self, paths: list[Path], n_classes: int, ignore_index: int | None):
        self.paths, self.n_classes, self.ignore_index = list(paths), n_classes, ignore_index

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> torch.Tensor:
        return read_mask(self.paths[i])

    def __getitem__(self, i: int) -> torch.Tensor:
        mask = self.read(i)
        _check_labels(mask, self.n_classes, self.ignore_index, str(self.paths[i]))
        return mask


class LabelArrays(MaskFiles):
    """DDPM-Seg's `.npy` label arrays as a lazy sequence: each checked against its image's size, then
    resized to side×side as the image is (`label_arrays`)."""

    def __init__(self, pairs: list[tuple[Path, Path]], n_classes: int, ignore_index: int | None, side: int | None):
        super().__init__([m for _, m in pairs], n_classes, ignore_index)
        self.images, self.side = [p for p, _ in pairs], side

    def read(self, i: int) -> torch.Tensor:
        return read_array_labels(self.paths[i], self.images[i], self.side)


class ArrayImages(ImageFiles):
    """The images of DDPM-Seg's layout as a lazy sequence (RGB), resized bilinearly to side×side as read."""

    def read(self, path: Path) -> torch.Tensor:
        return read_array_image(path, self.size)


def _lazy_folder(root: Path, split: str, n: int | None, classes: list[str], ignore: int | None,
                 side: int | None) -> ImageSet:
    split_root = _split_root(root, split)
    pairs = _some_pairs(split_root, n)
    if ignore is None:
        ignore = _read_classes(split_root, torch.zeros(1, dtype=torch.long))[1] if _has_classes_file(split_root) else None
    if _is_array_pairs(pairs):
        images, masks = ArrayImages([p for p, _ in pairs], 3, side), LabelArrays(pairs, len(classes), ignore, side)
    else:
        images, masks = ImageFiles([p for p, _ in pairs], 3, None), MaskFiles([m for _, m in pairs], len(classes), ignore)
    return ImageSet(images, classes=classes, name=str(split_root), masks=masks, ignore_index=ignore)


def _is_array_pairs(pairs: list[tuple[Path, Path]]) -> bool:
    return pairs[0][1].suffix == ".npy"


def _has_classes_file(root: Path) -> bool:
    return any((p / "classes.json").is_file() for p in (root, root.parent))


def _some_pairs(split_root: Path, n: int | None) -> list[tuple[Path, Path]]:
    pairs = _pairs(split_root)
    if n is not None and n > len(pairs):
        raise DiffrepError(f"asked for {n} labelled images but {split_root} holds only {len(pairs)}")
    return pairs[:n] if n is not None else pairs


def _read_pair(image_path: Path, mask_path: Path, side: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, mask) of a pair; DDPM-Seg's layout resized to side×side."""
    if mask_path.suffix == ".npy":
        mask = read_array_labels(mask_path, image_path, side)   # checked against the image's own size first
        return read_array_image(image_path, side), mask
    return read_image(image_path, 3, None)[0], read_mask(mask_path)


def _folder(root: Path, split: str, n: int | None, side: int | None) -> ImageSet:
    split_root = _split_root(root, split)
    pairs = _some_pairs(split_root, n)
    images, masks = [], []
    for image_path, mask_path in pairs:
        image, mask = _read_pair(image_path, mask_path, side)
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
    return ImageSet(torch.stack(images), classes=classes, name=str(split_root), masks=masks_t, ignore_index=ignore)
