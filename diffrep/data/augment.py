"""Augmentations: random crops and shifts for pre-training, and the classic MNIST distortions
(affine plus elastic) for the probes' augmented copies."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from ..options import check, option


def _windows(x: torch.Tensor, dy: list[int], dx: list[int], h: int, w: int) -> torch.Tensor:
    """The h×w window of image i at offset (dy[i], dx[i]), for every image."""
    return torch.stack([x[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(len(x))])


def random_crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A size×size window of each image at an offset drawn from `gen` (uniform over all offsets)."""
    n, _, h, w = x.shape
    dy = torch.randint(0, h - size + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, w - size + 1, (n,), generator=gen).tolist()
    return _windows(x, dy, dx, size, size)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ±max_shift pixels (edge-replicated), offsets drawn from `gen`.
    (Its own draw of both offsets at once, kept so that runs made before `random_crop` repeat exactly.)"""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen).tolist()
    return _windows(padded, dy, dx, h, w)


@dataclass(frozen=True)
class Distortion:
    """Random distortions of a probe's fit images, after the classic ones for MNIST (Simard et al.,
    2003): an affine map (rotation, scale, shear, translation, each drawn uniformly within ±), then a
    smooth elastic displacement field. All zero is the identity. The defaults were chosen by 5-fold
    cross-validation on the bundled MNIST train split (`benchmarks/bench_probe_augment.py`; the DDAE
    page of the documentation, "Final probe of the chosen cell")."""

    rotate: float = option(15.0, "copies' rotation, up to ± degrees (0: none)", min=0)
    scale: float = option(0.1, "copies' scaling, up to ± this fraction (0: none)", min=0, below=1)
    shear: float = option(0.15, "copies' shear, up to ± this slope (0: none)", min=0)
    shift: float = option(2.0, "copies' translation, up to ± pixels (0: none)", min=0)
    elastic: float = option(2.0, "copies' elastic displacement, up to this many pixels (0: none)", min=0)
    smooth: float = option(4.0, "the elastic field's smoothness, a Gaussian σ in pixels", min=0)

    def __post_init__(self):
        check(self)

    def __str__(self) -> str:
        return (f"rotation ±{self.rotate:g}°, scale ±{100 * self.scale:g}%, shear ±{self.shear:g}, "
                f"shift ±{self.shift:g} px, elastic ≤{self.elastic:g} px (σ {self.smooth:g} px)")


def random_distort(x: torch.Tensor, d: Distortion, gen: torch.Generator) -> torch.Tensor:
    """Each image of x (N×C×H×W in [-1, 1]) under its own random `d`, drawn from `gen`; bilinear
    resampling by torch's `affine_grid`/`grid_sample`, edges replicated, the elastic field smoothed by
    scipy's `gaussian_filter`."""
    n, _, h, w = x.shape
    return _distort(x, d, _draws(d, gen, n, h, w))


AMOUNTS = ("angle", "zoom", "shear", "dx", "dy")   # the per-image draws, in the order they are drawn


def _draws(d: Distortion, gen: torch.Generator, n: int, h: int, w: int) -> dict:
    """n images' random draws from `gen`, in the order they have always been drawn: rotation, scale,
    shear, x shift, y shift (n each, uniform in ±amount), then the elastic noise (n×2×h×w). Drawn as
    one vector: torch's CPU generator fills a tensor one value after another, so this is the same
    sequence as six calls, a call per draw (tested)."""
    flat = torch.rand(n * _per_image(d, h, w), generator=gen, dtype=torch.float64)
    return _scaled(d, flat[:len(AMOUNTS) * n].view(len(AMOUNTS), n).T, flat[len(AMOUNTS) * n:], h, w)


def _per_image(d: Distortion, h: int, w: int) -> int:
    """How many uniforms one image's distortion draws: the five amounts, and the elastic noise's 2·h·w."""
    return len(AMOUNTS) + (2 * h * w if d.elastic > 0 else 0)


def _scaled(d: Distortion, uniform: torch.Tensor, noise: torch.Tensor, h: int, w: int) -> dict:
    """The draws' dict from n×5 uniforms in [0, 1) (rotation, scale, shear, x and y shift) and the
    elastic noise's n·2·h·w uniforms, image after image (none without elastic): each in ±its amount."""
    amounts = torch.tensor([d.rotate, d.scale, d.shear, d.shift, d.shift], dtype=torch.float64)
    scaled = (uniform * 2 - 1) * amounts
    out = {name: scaled[:, k] for k, name in enumerate(AMOUNTS)}
    if d.elastic > 0:
        out["noise"] = noise.reshape(len(uniform), 2, h, w) * 2 - 1
    return out


def _distort(x: torch.Tensor, d: Distortion, draws: dict) -> torch.Tensor:
    """x resampled under the distortions `draws` (one per image), in one batch."""
    n, _, h, w = x.shape
    angle, zoom, shear = torch.deg2rad(draws["angle"]), 1 + draws["zoom"], draws["shear"]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # theta maps output to input coordinates, normalised to [-1, 1] (x first, as grid_sample's grid)
    theta = torch.stack([torch.stack([cos, shear * cos - sin, draws["dx"] * 2 / w], 1),
                         torch.stack([sin, shear * sin + cos, draws["dy"] * 2 / h], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta.float(), list(x.shape), align_corners=False)
    if d.elastic > 0:
        field = torch.from_numpy(gaussian_filter(draws["noise"].numpy(), sigma=(0, 0, d.smooth, d.smooth)))
        field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) * d.elastic
        grid = grid + (field * torch.tensor([2 / w, 2 / h], dtype=field.dtype).view(1, 2, 1, 1)).permute(0, 2, 3, 1).float()
    return torch.nn.functional.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border",
                                           align_corners=False)


class DistortedCopy:
    """Copy `copy` of a data set under random distortions `d`, one image at a time (a DataLoader
    transform: `DistortedCopy(d, seed, copy)(image, i)`) or a batch at a time (`.batch(images,
    indices)`, what `ImageBatches` calls: the resampling runs once per batch); image i's distortion
    comes from (seed, copy, i) alone, so it does not depend on the batching or the reading processes."""

    def __init__(self, d: Distortion, seed: int, copy: int):
        self.d, self.seed, self.copy = d, seed, copy

    def __call__(self, image: torch.Tensor, i: int) -> torch.Tensor:
        return self.batch(image[None], [i])[0]

    def batch(self, images: torch.Tensor, indices) -> torch.Tensor:
        """B×C×H×W images, image k distorted as image `indices[k]` of the set."""
        _, _, h, w = images.shape
        size = _per_image(self.d, h, w)   # one image's draws, ordered as `_draws` orders them
        flat = torch.stack([torch.rand(size, generator=self._generator(i), dtype=torch.float64) for i in indices])
        return _distort(images, self.d, _scaled(self.d, flat[:, :len(AMOUNTS)], flat[:, len(AMOUNTS):], h, w))

    def _generator(self, i: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed % 2 ** 64, self.copy, int(i)]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state))
