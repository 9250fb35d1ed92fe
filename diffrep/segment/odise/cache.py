"""Cached pyramids: where nothing before the mask generator trains (the empty prompt, the true
caption, the random-weight UNet, raw pixels), each scene's four maps are computed once into the
feature store (`run/cache/<split>/`, sharded, resumable) and every epoch reads them back; the implicit
captioner trains through the UNet, so its runs compute the pyramid live."""

from __future__ import annotations

from pathlib import Path

import torch

from ...features import as_tensor, maps_in_store

LEVELS = ("stride1", "stride2", "stride4", "stride8")


class PyramidSource:
    """A pyramid as a feature source of the store: maps(images, indices) → {level: N×C×h×w}."""

    def __init__(self, pyramid, captions: list, identity: dict):
        self.pyramid, self.captions, self._identity = pyramid, captions, identity

    def identity(self) -> dict:
        return self._identity

    @torch.no_grad()
    def maps(self, images: torch.Tensor, indices=None) -> dict:
        captions = None if indices is None else [self.captions[int(i)] for i in indices]
        maps = self.pyramid(images, captions)
        return {level: m.float().cpu() for level, m in zip(LEVELS, maps)}


def cached_pyramid(pyramid, data, n: int, side: int, folder: Path, identity: dict, batch: int) -> list:
    """The first n scenes' maps (finest first), each level as one array (in RAM when it fits)."""
    images = data.image_files(3, side)[:n] if n < len(data) else data.image_files(3, side)
    source = PyramidSource(pyramid, data.captions, identity)
    arrays = maps_in_store(source, images, folder, identity, batch, desc=f"features {folder.name}")
    return [arrays[level] for level in LEVELS]


def rows(levels: list, index, device) -> list[torch.Tensor]:
    index = torch.as_tensor(index, dtype=torch.long)
    return [as_tensor(level[index]).to(device) for level in levels]
