"""Panoptic labels in the COCO-panoptic layout: reading (users' own data and the bundled scenes) and
writing.

    root/annotations/panoptic_<split>.json   {"images": [...], "annotations": [...], "categories": [...]}
    root/images/<split>/<name>.png           the images (any format PIL reads; `file_name` in "images")
    root/panoptic/<split>/<name>.png         segment ids as RGB: id = R + 256·G + 256²·B; 0 = unlabelled

As in COCO: each annotation names its image (`image_id`), its PNG (`file_name`) and its segments
(`segments_info`: `id`, `category_id`, `area`, `bbox` [x, y, w, h], `iscrowd`); each category has `id`,
`name` and `isthing` (1: countable instances, 0: amorphous "stuff"). diffrep also reads, where
present, `synonyms` on a category (other names for open-vocabulary naming) and `caption` on an
image (for captioned pre-training).

Every problem in a file is reported by name, in one line: a segment id in a PNG that its JSON does
not list, a category id that is not among the categories, a PNG whose size differs from its image's.
The JSON-level checks run when a split is opened; the pixel-level ones when an item is read, or for
the whole split by `check_all()` (the training commands call it before any work starts).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DiffrepError
from .images import ImageFiles

VOID = 0   # segment id 0: unlabelled pixels, scored by nobody


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


@dataclass
class PanopticItem:
    """One labelled image: the image (3×H×W float32 in [-1, 1]), the segment-id map (H×W int64) and
    its segments ({id: category id}; ids absent from the map are allowed: a segment fully hidden)."""
    image: torch.Tensor
    segment_ids: torch.Tensor
    segments: dict
    caption: str | None
    name: str

    def category_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(H×W category ids, with -1 for unlabelled pixels; H×W instance ids, 0 for stuff and void)."""
        cat = torch.full_like(self.segment_ids, -1)
        for sid, c in self.segments.items():
            cat[self.segment_ids == sid] = c
        return cat, self.segment_ids.clone()


class PanopticSet:
    """A split of a COCO-panoptic folder: `len`, `items[i]` (a PanopticItem), `categories` (list of
    dicts with id, name, isthing, synonyms), `captions`."""

    def __init__(self, root: str | Path, split: str):
        self.root, self.split = Path(root), split
        self.json_path = self.root / "annotations" / f"panoptic_{split}.json"
        if not self.json_path.is_file():
            have = sorted(p.stem.removeprefix("panoptic_") for p in (self.root / "annotations").glob("panoptic_*.json"))
            raise DiffrepError(f"{self.json_path} is missing: {self.root} is not a COCO-panoptic folder with a "
                               f"{split!r} split" + (f" (it has {', '.join(have)})" if have else ""))
        try:
            raw = json.loads(self.json_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DiffrepError(f"{self.json_path} is not valid JSON ({err})") from None
        self.categories = _categories(raw, self.json_path)
        self._images = {im["id"]: im for im in _list(raw, "images", self.json_path)}
        self._annotations = [self._checked(a) for a in _list(raw, "annotations", self.json_path)]

    def _checked(self, ann: dict) -> dict:
        where = f"{self.json_path} (annotation {ann.get('file_name', ann.get('image_id'))!r})"
        if ann.get("image_id") not in self._images:
            raise DiffrepError(f"{where}: image_id {ann.get('image_id')!r} is not among the images")
        known = {c["id"] for c in self.categories}
        for seg in ann.get("segments_info", []):
            if seg.get("category_id") not in known:
                raise DiffrepError(f"{where}: segment {seg.get('id')} has category id {seg.get('category_id')!r}, "
                                   f"which is not among the categories {sorted(known)}")
            if seg.get("id") in (None, VOID):
                raise DiffrepError(f"{where}: a segment has id {seg.get('id')!r}; ids are positive integers")
        return ann

    def __len__(self) -> int:
        return len(self._annotations)

    def __getitem__(self, i: int) -> PanopticItem:
        ann = self._annotations[i]
        image_info = self._images[ann["image_id"]]
        image_path = self.root / "images" / self.split / image_info["file_name"]
        png_path = self.root / "panoptic" / self.split / ann["file_name"]
        image = _read(image_path, "RGB")
        ids = rgb_to_id(_read(png_path, "RGB"))
        if ids.shape != image.shape[:2]:
            raise DiffrepError(f"{png_path}: its size {ids.shape[1]}×{ids.shape[0]} differs from its image "
                               f"{image_path.name} ({image.shape[1]}×{image.shape[0]})")
        segments = {s["id"]: s["category_id"] for s in ann.get("segments_info", [])}
        unknown = sorted(set(np.unique(ids).tolist()) - set(segments) - {VOID})
        if unknown:
            raise DiffrepError(f"{png_path}: segment ids {unknown[:5]} are in the PNG but not in the segments_info "
                               f"of {self.json_path.name}")
        tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
        return PanopticItem(tensor, torch.from_numpy(ids), segments, image_info.get("caption"), image_info["file_name"])

    def check_all(self) -> None:
        """Read every item (raises on the first problem, naming its file)."""
        for i in range(len(self)):
            self[i]

    def image_files(self, channels: int = 3, size: int | None = None):
        """The split's images in annotation order as a lazy sequence (read as used)."""
        return ImageFiles([self.root / "images" / self.split / self._images[a["image_id"]]["file_name"]
                           for a in self._annotations], channels, size)

    @property
    def captions(self) -> list[str | None]:
        return [self._images[a["image_id"]].get("caption") for a in self._annotations]

    def names(self) -> list[list[str]]:
        """Each category's names, its name first then its synonyms, in category order."""
        return [[c["name"], *c.get("synonyms", [])] for c in self.categories]


def _list(raw, key: str, path: Path) -> list:
    if not isinstance(raw, dict) or not isinstance(raw.get(key), list):
        raise DiffrepError(f"{path} has no {key!r} list: not a COCO-panoptic annotation file")
    return raw[key]


def _categories(raw, path: Path) -> list[dict]:
    cats = _list(raw, "categories", path)
    seen = set()
    for c in cats:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not str(c.get("name", "")).strip():
            raise DiffrepError(f"{path}: category {c!r} needs an integer id and a non-empty name")
        if c["id"] in seen:
            raise DiffrepError(f"{path}: category id {c['id']} appears twice")
        seen.add(c["id"])
    return [{"id": c["id"], "name": c["name"], "isthing": int(c.get("isthing", 1)),
             "synonyms": list(c.get("synonyms", []))} for c in cats]


def _read(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.array(img.convert(mode))
    except FileNotFoundError:
        raise DiffrepError(f"{path} is missing") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DiffrepError(f"{path} is not a readable image ({err})") from None


# ----------------------------------------------------------------------------- writing

def segment_info(sid: int, category: int, ids: np.ndarray) -> dict:
    """COCO's description of one segment of an id map: area and [x, y, w, h] box."""
    ys, xs = np.nonzero(ids == sid)
    box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] if len(xs) else [0] * 4
    return {"id": int(sid), "category_id": int(category), "area": int(len(xs)), "bbox": box, "iscrowd": 0}


def write_split(root: str | Path, split: str, items, categories: list[dict]) -> Path:
    """Write `items` (iterable of (name, H×W×3 uint8 image, H×W segment ids, {id: category}, caption))
    as split `split` of a COCO-panoptic folder. The split appears whole or not at all: images, PNGs
    and JSON are written beside it and moved into place at the end."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".writing-{split}"
    shutil.rmtree(tmp, ignore_errors=True)
    images, annotations = [], []
    try:
        for sub in ("images", "panoptic"):
            (tmp / sub).mkdir(parents=True)
        for index, (name, image, ids, segments, caption) in enumerate(items):
            file = f"{name}.png"
            Image.fromarray(image).save(tmp / "images" / file)
            Image.fromarray(id_to_rgb(ids)).save(tmp / "panoptic" / file)
            images.append({"id": index, "file_name": file, "height": int(ids.shape[0]), "width": int(ids.shape[1]),
                           **({"caption": caption} if caption else {})})
            annotations.append({"image_id": index, "file_name": file,
                                "segments_info": [segment_info(s, c, ids) for s, c in segments.items()]})
        (tmp / "panoptic.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}, indent=1))
        done = root / "annotations" / f"panoptic_{split}.json"
        done.unlink(missing_ok=True)   # the split's JSON goes last: without it the split is not there
        for sub in ("images", "panoptic"):
            target = root / sub / split
            target.parent.mkdir(exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            (tmp / sub).rename(target)
        done.parent.mkdir(exist_ok=True)
        (tmp / "panoptic.json").replace(done)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
