"""Feature sources: one interface for every method and baseline.

A source turns a batch of images (B×C×H×W in [-1, 1]) into feature maps at each map's own
resolution: `maps(images) -> {key: B×C×h×w}`, with `channels` ({key: C}) known before any image
and `identity()` (what the source is: part of a cache's identity).

- `DiffusionFeatures`: blocks × noise levels of a diffusers denoiser through the featurizer
  (keys: `Cell(t, block)`); the loop over t reuses one encode of the images.
- `RawPixels`: the pixels of a (2r+1)² neighbourhood (edges replicated), optionally centred (minus
  the patch mean: cosine similarity is then normalised cross-correlation) and with the pixel's
  (y, x) position in [-1, 1]: DDPM-Seg's and DIFT's raw-pixel baselines.
- `Daisy`: scikit-image's DAISY descriptor at every pixel, DIFT's classical baseline.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.precision import autocast_dtype
from ..core.featurizer import Featurizer
from ..data.images import match_channels
from .cell import Cell


def total_channels(source) -> int:
    """The channels of all of a feature source's maps together."""
    return sum(source.channels.values())


class DiffusionFeatures:
    """Maps of a denoiser at `blocks` × `ts`: {Cell(t, block): B×C×h×w}.

    ensemble: noise draws averaged; seed: fixes the noise (image i's draw k at level t comes from
    (seed, i, k, t), see `Featurizer.extract`); shared_noise: one noise tensor for every image (DIFT's),
    image 0's; noise_per_t False: every t gets the same noise, from (seed, i, k) (with shared_noise:
    DDPM-Seg's one noise tensor for every image and every t);
    precision: 'fp32', 'bf16' or 'fp16' autocast; weights: 'trained' or 'random' (a label in `identity()`)."""

    def __init__(self, featurizer: Featurizer, blocks: list[str], ts: list, ensemble: int = 1, seed: int = 0,
                 shared_noise: bool = False, precision: str = "fp32", weights: str = "trained",
                 noise_per_t: bool = True):
        self.featurizer = featurizer
        self.blocks = featurizer.check_blocks(list(blocks))
        self.ts = [featurizer.backbone.noise.check(t) for t in ts]
        self.ensemble, self.seed, self.shared_noise, self.precision = ensemble, seed, shared_noise, precision
        autocast_dtype(precision, featurizer.backbone.device)   # refuses fp16 on the CPU before any work
        self.weights, self.noise_per_t = weights, noise_per_t
        channels = {b.name: b.channels for b in featurizer.feature_info()}
        self.channels = {Cell(t, b): channels[b] for t in self.ts for b in self.blocks}

    def identity(self) -> dict:
        return {"kind": "diffusion", "model": self.featurizer.backbone.source, "weights": self.weights,
                "blocks": self.blocks, "ts": self.ts, "ensemble": self.ensemble, "seed": self.seed,
                "shared_noise": self.shared_noise, "precision": self.precision,
                # named only when off, so that caches written before the option existed still match
                **({} if self.noise_per_t else {"noise_per_t": False})}

    @torch.no_grad()
    def maps(self, images: torch.Tensor, indices=None, prompt: str | None = None,
             as_float: bool = True) -> dict[Cell, torch.Tensor]:
        """`indices`: the images' indices in their data set (default 0…B-1; they seed each image's
        noise); `prompt` conditions text-conditional UNets; `as_float` False leaves the maps in the
        dtype they were computed in (see `Featurizer.extract_latents`)."""
        backbone = self.featurizer.backbone
        images = match_channels(images, backbone.image_channels)
        self.featurizer.check_images(images)
        latents = backbone.encode(images.to(backbone.device))
        out = {}
        for t in self.ts:
            feats = self.featurizer.extract_latents(latents, t, self.blocks, self.ensemble, self.seed,
                                                    self.shared_noise, prompt=prompt, precision=self.precision,
                                                    indices=indices, noise_per_t=self.noise_per_t, as_float=as_float)
            out.update({Cell(t, b): f for b, f in feats.items()})
        return out


def patches(images: torch.Tensor, radius: int) -> torch.Tensor:
    """B×(C·(2r+1)²)×H×W: every pixel's (2r+1)² neighbourhood, edges replicated."""
    n, c, h, w = images.shape
    side = 2 * radius + 1
    padded = F.pad(images, (radius,) * 4, mode="replicate")
    return F.unfold(padded, side).view(n, c * side * side, h, w)


class RawPixels:
    """Raw pixels of each pixel's neighbourhood, as a feature source at full resolution."""

    def __init__(self, radius: int = 2, image_channels: int = 3, centred: bool = False, position: bool = True,
                 name: str = "pixels"):
        self.radius, self.centred, self.position, self.name = radius, centred, position, name
        self.channels = {name: image_channels * (2 * radius + 1) ** 2 + (2 if position else 0)}

    def identity(self) -> dict:
        return {"kind": "raw_pixels", "radius": self.radius}

    def maps(self, images: torch.Tensor, indices=None) -> dict[str, torch.Tensor]:
        n, _, h, w = images.shape
        x = patches(images, self.radius)
        if self.centred:   # image by image: the same reduction as on one image alone
            x = torch.stack([p - p.mean(0, keepdim=True) for p in x])
        if self.position:
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            x = torch.cat([x, torch.stack([ys, xs]).expand(n, -1, -1, -1)], 1)
        return {self.name: x}


class PixelPatches:
    """Raw pixels on a token grid: the image cut into `factor`×`factor` patches, each patch's pixels as
    its channels (space-to-depth), so that heads read pixels on the grid they read a block's map on.
    An image whose side `factor` does not divide is average-pooled to the nearest multiple first."""

    def __init__(self, factor: int, image_channels: int, name: str = "pixels"):
        self.factor, self.name = factor, name
        self.channels = {name: image_channels * factor * factor}

    def identity(self) -> dict:
        return {"kind": "pixel_patches", "factor": self.factor}

    def maps(self, images: torch.Tensor, indices=None) -> dict[str, torch.Tensor]:
        f = self.factor
        h, w = images.shape[-2:]
        if h % f or w % f:
            images = F.adaptive_avg_pool2d(images, (max(1, h // f) * f, max(1, w // f) * f))
        return {self.name: F.pixel_unshuffle(images, f)}


class Daisy:
    """scikit-image's DAISY on the grey image at every pixel (the image reflect-padded by the radius)."""

    def __init__(self, radius: int = 15, name: str = "daisy"):
        self.radius, self.name = radius, name
        self.channels = {name: (3 * 8 + 1) * 8}   # (rings · histograms + 1) · orientations

    def identity(self) -> dict:
        return {"kind": "daisy", "radius": self.radius}

    def maps(self, images: torch.Tensor, indices=None) -> dict[str, torch.Tensor]:
        from skimage.feature import daisy   # scikit-image's feature module is slow to import; only this needs it

        out = []
        for im in images:
            grey = np.pad(((im.mean(0) + 1) / 2).numpy().astype(np.float64), self.radius, mode="reflect")
            desc = daisy(grey, step=1, radius=self.radius, rings=3, histograms=8, orientations=8)
            out.append(torch.from_numpy(desc).permute(2, 0, 1).float())
        return {self.name: torch.stack(out).contiguous()}
