"""DDPM-Seg's pixel sampling: which labelled pixels each epoch trains on and which stop it early.

Decisions: early stopping uses a fixed tenth of each labelled image's pixels that training never
samples (or, with `held_out_images`, whole images); a class with fewer than `min_class_pixels` pixels
in an image is ignored in that image for training (never in evaluation); pixels are class-balanced
within each image by default; the pool of sampled features is capped at `pool_mb`.
"""

from __future__ import annotations

import torch

from ...data import ImageSet
from ...errors import DiffrepError
from ...features import PEAK, ImageCache, features_at
from .config import SegConfig

def usable_pixels(mask: torch.Tensor, n_classes: int, ignore: int | None, min_pixels: int) -> torch.Tensor:
    """H×W bool: pixels with a real label whose class covers at least `min_pixels` pixels here."""
    ok = (mask >= 0) & (mask < n_classes)
    if ignore is not None:
        ok &= mask != ignore
    counts = torch.bincount(mask[ok].flatten(), minlength=n_classes)
    return ok & (counts[mask.clamp(0, n_classes - 1)] >= min_pixels)


def held_out_pixels(shape: tuple[int, int], seed: int, fraction: float = 0.1) -> torch.Tensor:
    """A fixed H×W bool set of pixels kept for early stopping (per image, seeded)."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < fraction


def held_out_sets(data: ImageSet, images: list[int], cfg: SegConfig) -> dict[int, torch.Tensor]:
    """Per image, the H×W pixels kept for early stopping: all of the last `held_out_images` labelled
    images (whole images test generalisation to new scenes, not to new pixels of seen ones), or a
    fixed seeded tenth of every image. A colour copy holds out what its original does."""
    originals = len(data) // (cfg.colour_copies + 1)
    if cfg.held_out_images and not 0 < cfg.held_out_images < originals:
        raise DiffrepError(f"--held-out-images {cfg.held_out_images} leaves no labelled image to train on "
                           f"({originals} labelled)")
    held = {}
    for i in images:
        shape = tuple(data.masks[i].shape)
        if cfg.held_out_images:
            held[i] = torch.full(shape, i % originals >= originals - cfg.held_out_images)
        else:
            held[i] = held_out_pixels(shape, cfg.seed * 100003 + i % originals)
    return held


def sample_pixels(labels: torch.Tensor, ok: torch.Tensor, n: int, balanced: bool, gen: torch.Generator) -> torch.Tensor:
    """Up to `n` flat indices of pixels where `ok`, drawn without replacement; `balanced` gives each
    class present an equal share (a class with fewer pixels gives all it has)."""
    candidates = ok.flatten().nonzero().squeeze(1)
    if not balanced or len(candidates) <= n:
        return candidates[torch.randperm(len(candidates), generator=gen)[:n]]
    flat = labels.flatten()[candidates]
    classes = flat.unique()
    share = max(1, n // len(classes))
    picks = []
    for c in classes:
        members = candidates[flat == c]
        picks.append(members[torch.randperm(len(members), generator=gen)[:share]])
    return torch.cat(picks)


class PixelPools:
    """Draws pools of (features, labels) from a feature cache, one image at a time."""

    def __init__(self, cache: ImageCache, keys: list, data: ImageSet, images: list[int], cfg: SegConfig,
                 channels: int):
        self.cache, self.keys, self.data, self.images, self.cfg, self.channels = cache, keys, data, images, cfg, channels
        n_classes = len(data.classes)
        self.usable = {i: usable_pixels(data.masks[i], n_classes, data.ignore_index, cfg.min_class_pixels) for i in images}
        self.held = held_out_sets(data, images, cfg)
        budget = cfg.pool_mb * 2**20 / (4 * channels * max(len(images), 1))
        self.per_image = int(max(1, min(cfg.pixels_per_image, budget)))
        if self.per_image < cfg.pixels_per_image:
            print(f"note: {self.per_image} pixels per image (not {cfg.pixels_per_image}) keep the pool within "
                  f"{cfg.pool_mb} MB at {channels} channels")

    def _draw(self, where: dict, n: int, balanced: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        picks = {i: sample_pixels(self.data.masks[i], where[i], n, balanced, gen) for i in self.images}
        x = torch.empty(sum(len(p) for p in picks.values()), self.channels)   # filled in place: no second copy
        y = torch.cat([self.data.masks[i].flatten()[p] for i, p in picks.items()])
        start = 0
        for i, index in picks.items():
            x[start:start + len(index)] = features_at(self.cache.maps(i, self.keys), index, self.cache.size)
            start += len(index)
        PEAK.note("training pool", x)
        return x, y

    def train(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        where = {i: self.usable[i] & ~self.held[i] for i in self.images}
        return self._draw(where, self.per_image, self.cfg.balanced, self.cfg.seed * 1000 + epoch)

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        where = {i: self.usable[i] & self.held[i] for i in self.images}
        return self._draw(where, max(1, self.per_image // 4), False, self.cfg.seed - 1)

    def everything(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniformly drawn labelled pixels of these images (scoring a fold in --select)."""
        where = {i: (self.data.masks[i] >= 0) & (self.data.masks[i] < len(self.data.classes)) for i in self.images}
        return self._draw(where, n, False, self.cfg.seed - 2)
