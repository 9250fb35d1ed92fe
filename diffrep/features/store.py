"""The feature store: safetensors files of features, each with a JSON manifest in its metadata that
says where the features came from and which cell every tensor is.

- `save_features` / `load_features`: one file of tensors keyed by Cell (or a string: "labels",
  "pixels"), written atomically.
- `ImageCache`: a folder of one file per image (DDPM-Seg's maps at their own resolution, float16),
  reused when its `cache.json` matches the source and the images; `cache.json` is written last, so a
  killed extraction is never mistaken for a complete one, and a killed one resumes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from tqdm import tqdm

from ..core.runtime import barrier, release_memory
from ..errors import DiffrepError
from ..runs import atomic_path, write_json
from .cell import file_key, key_from_json, key_to_json
from .sampling import PEAK

FORMAT = "diffrep-features/2"   # 2: tensors keyed by Cell, listed in the manifest
FLOAT16_MAX = 65504.0


def save_features(path: str | Path, tensors: dict, meta: dict) -> Path:
    """Write {Cell or str: tensor} with `meta`; the manifest lists the keys in order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(tensors)
    manifest = {**meta, "keys": [key_to_json(k) for k in keys]}
    with atomic_path(path) as tmp:
        save_file({file_key(k): tensors[k].contiguous() for k in keys}, str(tmp),
                  metadata={"format": FORMAT, "meta": json.dumps(manifest)})
    return path


def read_meta(path: str | Path) -> dict:
    """The metadata of a diffrep feature file; a missing, damaged, foreign or other-version file is a
    `DiffrepError` that names it."""
    path = Path(path)
    if not path.is_file():
        raise DiffrepError(f"feature file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise DiffrepError(f"feature file {path} is corrupt or not a safetensors file ({err}); delete it and "
                           "extract again") from None
    if str(header.get("format", "")).startswith("diffrep-features/") and header["format"] != FORMAT:
        raise DiffrepError(f"feature file {path} was written by another version of diffrep ({header['format']}, "
                           f"this one reads {FORMAT}); delete it and extract again")
    if header.get("format") != FORMAT:
        raise DiffrepError(f"{path} is a safetensors file but not a diffrep feature file (format {header.get('format')!r})")
    return json.loads(header["meta"])


def load_features(path: str | Path) -> tuple[dict, dict]:
    """({Cell or str: tensor} in the order written, manifest)."""
    meta = read_meta(path)
    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DiffrepError(f"feature file {path} is corrupt ({err}); delete it and extract again") from None
    keys = [key_from_json(k) for k in meta.pop("keys", [])]
    missing = [file_key(k) for k in keys if file_key(k) not in raw]
    if missing:
        raise DiffrepError(f"feature file {path} lacks {missing[:3]}; the file is incomplete: delete it and extract again")
    return {k: raw[file_key(k)] for k in keys}, meta


def cached(path: Path, meta: dict, compute) -> dict:
    """Features from `path` when it was written with the same settings, else computed and written
    (a damaged cache file is computed again)."""
    if path.is_file():
        try:
            saved = read_meta(path)
            saved.pop("keys", None)
            if saved == json.loads(json.dumps(meta)):
                print(f"reusing cached features {path}")
                return load_features(path)[0]
        except DiffrepError as err:
            print(f"note: {err.args[0].split(';')[0]}; extracting again")
    tensors = compute()
    save_features(path, tensors, meta)
    return tensors


def images_digest(images: torch.Tensor) -> str:
    return hashlib.sha1(images.contiguous().numpy().tobytes()).hexdigest()[:16]


class ImageCache:
    """Each image's maps in `folder/{i:05d}.safetensors` (float16: half the bytes, and activations of
    these networks sit far inside its range), from a feature source; `maps(i, keys)` reads one back.

    Resumable: `pending.json` (the settings) is written before the first image, each image file is
    renamed into place whole, and `cache.json` is written last; an extraction killed half-way and
    started again with the same settings keeps the images already written (a damaged one is extracted
    again). Under several processes (`state`, accelerate's PartialState) batch b is extracted by
    rank b mod N, and every rank returns once the cache is complete."""

    def __init__(self, folder: str | Path, source, images: torch.Tensor, batch_size: int = 8, desc: str = "features",
                 state=None):
        self.folder = Path(folder)
        self.n = len(images)
        self.size = tuple(images.shape[-2:])
        rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
        meta = {"source": source.identity(), "images": images_digest(images), "n": self.n}
        if self._matches(meta):
            print(f"reusing cached features {self.folder}")
            return
        if rank == 0:
            self._start(meta)
        barrier(state)
        starts = [s for b, s in enumerate(range(0, self.n, batch_size)) if b % world == rank]
        todo = [s for s in starts if not all(self._readable(i) for i in range(s, min(s + batch_size, self.n)))]
        if len(todo) < len(starts):
            print(f"{self.folder}: {len(starts) - len(todo)} of {len(starts)} batches already extracted")
        for start in tqdm(todo, desc=desc, dynamic_ncols=True, disable=not todo):
            release_memory()
            batch = source.maps(images[start:start + batch_size])
            PEAK.note("extracted batch", *batch.values())
            for j in range(len(next(iter(batch.values())))):
                half = {k: v[j].clamp(-FLOAT16_MAX, FLOAT16_MAX).half() for k, v in batch.items()}
                save_features(self.folder / f"{start + j:05d}.safetensors", half, {"index": start + j})
        barrier(state)
        if rank == 0:
            write_json(self.folder / "cache.json", meta)   # written last: marks the cache complete
        barrier(state)

    def _start(self, meta: dict) -> None:
        """Keep the image files of an unfinished extraction with these settings; otherwise clear them."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "cache.json").unlink(missing_ok=True)
        pending = self.folder / "pending.json"
        try:
            same = json.loads(pending.read_text()) == json.loads(json.dumps(meta))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            same = False
        if not same:
            for old in self.folder.glob("[0-9]*.safetensors"):
                old.unlink()
            write_json(pending, meta)
        else:
            print(f"continuing the unfinished extraction in {self.folder}")

    def _readable(self, i: int) -> bool:
        path = self.folder / f"{i:05d}.safetensors"
        if not path.is_file():
            return False
        try:
            return read_meta(path).get("index") == i
        except DiffrepError:
            print(f"note: {path} is damaged; extracting it again")
            return False

    def _matches(self, meta: dict) -> bool:
        path = self.folder / "cache.json"
        if not path.is_file():
            return False
        try:
            saved = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            print(f"note: {path} is damaged; extracting the features again")
            return False
        if saved != json.loads(json.dumps(meta)):
            return False
        return all((self.folder / f"{i:05d}.safetensors").is_file() for i in range(self.n))

    def __len__(self) -> int:
        return self.n

    def maps(self, i: int, keys: list) -> dict:
        """Image i's maps for `keys`, in that order (the order fixes the feature's channel layout)."""
        tensors = load_features(self.folder / f"{i:05d}.safetensors")[0]
        missing = [file_key(k) for k in keys if k not in tensors]
        if missing:
            raise DiffrepError(f"cached features {self.folder} lack {missing[:3]}; delete the folder to rebuild it")
        tensors = {k: tensors[k] for k in keys}
        PEAK.note("cached image", *tensors.values())
        return tensors
