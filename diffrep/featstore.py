"""Feature files: safetensors with one tensor per (t, block[, pool]) plus labels, and a JSON manifest
in the metadata saying where the features came from. Written to a temporary name and renamed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .errors import DiffrepError

FORMAT = "diffrep-features/1"


def feature_key(t, block: str, pool: int | None = None) -> str:
    return f"t={t}/{block}" + ("" if pool is None else f"/pool={pool}")


def save_features(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"format": FORMAT, "meta": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DiffrepError(f"feature file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise DiffrepError(f"feature file {path} is corrupt or not a safetensors file: {err}") from err
    if header.get("format") != FORMAT:
        raise DiffrepError(f"{path} is a safetensors file but not a diffrep feature file (format {header.get('format')!r})")
    return json.loads(header["meta"])


def load_features(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    meta = read_meta(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DiffrepError(f"feature file {path} is corrupt: {err}") from err
    return tensors, meta
