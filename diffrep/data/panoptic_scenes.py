"""The bundled panoptic scenes: real MNIST digits ("things", one instance id each) written on two or
three regions of real textures and photographs from scikit-image ("stuff"), with a caption that names
every object and region ("a three and a seven on brick wall beside grass").

Written once into the COCO-panoptic layout (`diffrep.data.coco_panoptic`) under the cache folder and
read from there like any user's folder, so that one reader serves both.

Decisions:
- Splits train / val / test share no digit and no texture region: digits come from disjoint parts of
  MNIST (train: mnist train minus its last 500; val: those 500; test: mnist test), regions from
  disjoint vertical bands of each texture (60 / 20 / 20% of its width).
- Stuff regions are cut by straight lines at random angles; each region is a different texture, tinted
  with its category's colour (the grey textures of scikit-image would otherwise look alike), so that a
  name such as "grass" matches what it looks like.
- A digit is a pixel-exact instance where its stroke covers at least half a pixel. An instance left
  with fewer than MIN_AREA visible pixels (hidden by a later digit) is marked unlabelled (id 0), as
  COCO marks what it cannot name.
"""

from __future__ import annotations

import fcntl
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..files import cache_root
from .coco_panoptic import PanopticSet, write_split
from .scenes import _digits, _texture

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# stuff: name -> (scikit-image image, RGB tint, synonyms)
STUFF = {"brick wall": ("brick", (0.85, 0.45, 0.35), ["bricks"]),
         "grass": ("grass", (0.45, 0.85, 0.35), ["lawn"]),
         "gravel": ("gravel", (0.75, 0.7, 0.6), ["pebbles"]),
         "moon surface": ("moon", (0.7, 0.7, 0.8), ["craters"]),
         "starry sky": ("hubble_deep_field", (1.0, 1.0, 1.0), ["galaxies"]),
         "stained tissue": ("immunohistochemistry", (1.0, 1.0, 1.0), ["cells"])}
SPLIT_SEEDS = {"train": 11, "val": 12, "test": 13}
DEFAULT_SIZES = {"train": 2000, "val": 200, "test": 200}
BANDS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}   # of each texture's width
VAL_DIGITS = 500            # the last 500 digits of mnist train are val's
DIGITS_PER_SCENE = (1, 3)   # inclusive
DIGIT_SIDE = (0.4, 0.55)    # of the scene side
MIN_AREA = 12               # visible pixels for an instance to be labelled
BRIGHTNESS = (0.35, 0.6)    # stuff is dimmed so that the near-white ink stands out
INK = (0.8, 1.0)
FORMAT = "panoptic-scenes-v1"


def categories() -> list[dict]:
    """Things 1-10 (digits 0-9), stuff 11-16, COCO style, with synonyms."""
    things = [{"id": 1 + d, "name": w, "isthing": 1, "synonyms": [f"digit {d}", str(d)]}
              for d, w in enumerate(NUMBER_WORDS)]
    stuff = [{"id": 11 + i, "name": n, "isthing": 0, "synonyms": syn} for i, (n, (_, _, syn)) in enumerate(STUFF.items())]
    return things + stuff


def _digit_pool(split: str) -> tuple[np.ndarray, np.ndarray]:
    digits, labels = _digits("test" if split == "test" else "train")
    if split == "train":
        return digits[:-VAL_DIGITS], labels[:-VAL_DIGITS]
    if split == "val":
        return digits[-VAL_DIGITS:], labels[-VAL_DIGITS:]
    return digits, labels


def _region_texture(rng, name: str, split: str, size: int) -> np.ndarray:
    image, tint, _ = STUFF[name]
    tex = _texture(image)
    h, w, _ = tex.shape
    x0, x1 = (int(w * f) for f in BANDS[split])
    crop = min(h, x1 - x0, int(size * rng.uniform(1.0, 2.0)))
    y, x = rng.integers(0, h - crop + 1), rng.integers(x0, x1 - crop + 1)
    patch = torch.from_numpy(tex[y:y + crop, x:x + crop]).permute(2, 0, 1)[None]
    patch = F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].numpy()
    return patch * np.asarray(tint, np.float32)[:, None, None] * rng.uniform(*BRIGHTNESS)


def _stuff_layout(rng, size: int, regions: int) -> np.ndarray:
    """size×size region indices 0..regions-1, cut by straight lines at random angles."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    layout = np.zeros((size, size), np.int64)
    for r in range(1, regions):
        for _ in range(20):   # a cut that leaves region r at least a sixth of the scene
            angle, offset = rng.uniform(0, np.pi), rng.uniform(-0.25, 0.25) * size
            side = xx * np.cos(angle) + yy * np.sin(angle) > offset
            if (side & (layout == 0)).mean() > 1 / 6 and (~side | (layout != 0)).mean() > 1 / 6:
                break
        layout[side & (layout == 0)] = r
    return layout


def scene(split: str, index: int, size: int = 64):
    """(name, H×W×3 uint8 image, H×W segment ids, {segment id: category id}, caption)."""
    rng = np.random.default_rng([SPLIT_SEEDS[split], index])
    names = list(STUFF)
    stuff = [names[i] for i in rng.choice(len(names), size=rng.integers(2, 4), replace=False)]
    layout = _stuff_layout(rng, size, len(stuff))
    image = np.zeros((3, size, size), np.float32)
    ids = np.zeros((size, size), np.int64)
    segments = {}
    for r, name in enumerate(stuff):
        image[:, layout == r] = _region_texture(rng, name, split, size)[:, layout == r]
        ids[layout == r] = 1 + r
        segments[1 + r] = 11 + names.index(name)
    digits, labels = _digit_pool(split)
    for n in range(rng.integers(DIGITS_PER_SCENE[0], DIGITS_PER_SCENE[1] + 1)):
        k = rng.integers(len(digits))
        side = int(size * rng.uniform(*DIGIT_SIDE))
        stroke = F.interpolate(torch.from_numpy(digits[k])[None, None], size=(side, side), mode="bilinear",
                               antialias=True, align_corners=False)[0, 0].clamp(0, 1).numpy()
        for _ in range(20):   # where it hides little of the digits already there
            y, x = rng.integers(0, size - side + 1, size=2)
            if (ids[y:y + side, x:x + side][stroke >= 0.5] > 10).mean() < 0.05:
                break
        colour = rng.uniform(*INK, size=3).astype(np.float32)
        box = image[:, y:y + side, x:x + side]
        image[:, y:y + side, x:x + side] = box * (1 - stroke) + colour[:, None, None] * stroke
        sid = 11 + n   # above every stuff id
        ids[y:y + side, x:x + side][stroke >= 0.5] = sid
        segments[sid] = 1 + int(labels[k])
    for sid in [s for s in segments if s > 10]:
        if (ids == sid).sum() < MIN_AREA:
            ids[ids == sid] = 0
            del segments[sid]
    caption = _caption([NUMBER_WORDS[c - 1] for s, c in segments.items() if s > 10], stuff)
    rgb = (image.clip(0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    return f"{split}-{index:06d}", rgb, ids, segments, caption


def with_article(word: str) -> str:
    """'an eight', 'a three': a thing as the captions name it."""
    return f"an {word}" if word[:1].lower() in "aeio" else f"a {word}"


def _caption(digits: list[str], stuff: list[str]) -> str:
    """'a three and a seven on brick wall beside grass' (every digit placed and every region)."""
    things = " and ".join(with_article(d) for d in digits)
    return f"{things} on {stuff[0]}" + "".join(f" beside {s}" for s in stuff[1:])


@lru_cache(maxsize=None)
def panoptic_scenes_folder(size: int = 64, root: str | None = None) -> Path:
    """The bundled panoptic scenes in COCO-panoptic layout, written on first use (deterministic)."""
    folder = Path(root) if root else cache_root() / f"{FORMAT}-{size}"
    missing = lambda split: not (folder / "annotations" / f"panoptic_{split}.json").is_file()  # noqa: E731
    if not any(missing(split) for split in DEFAULT_SIZES):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    # two commands started together on a fresh machine would write the same split at once: the second
    # waits for the first here (flock, released by the kernel if the writer dies), then finds it written
    with open(folder / ".writing.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for split, n in DEFAULT_SIZES.items():
            if missing(split):
                print(f"writing the bundled panoptic scenes ({split}: {n}) to {folder}", flush=True)
                write_split(folder, split, (scene(split, i, size) for i in range(n)), categories())
    return folder


def panoptic_scenes(split: str, size: int = 64) -> PanopticSet:
    return PanopticSet(panoptic_scenes_folder(size), split)
