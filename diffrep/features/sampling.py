"""Reading feature maps at pixels, without building full-resolution maps.

A C×h×w map covers an H×W image; feature cell j covers image pixels [j·s, (j+1)·s). Sampling it
bilinearly at a pixel centre with `grid_sample(align_corners=False, padding_mode="border")` gives
exactly what `F.interpolate(..., mode="bilinear", align_corners=False)` to H×W would give at that
pixel, so DDPM-Seg's per-pixel features and DIFT's upsampled target maps are computed only where
they are needed (tested against the upsampled maps)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class PeakBytes:
    """The largest feature tensor held at once, by what held it: how the tests check bounded memory."""

    def __init__(self):
        self.peak: dict[str, int] = {}

    def note(self, what: str, *tensors: torch.Tensor) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors)
        self.peak[what] = max(self.peak.get(what, 0), size)


PEAK = PeakBytes()
"""The process's record of the largest feature tensors held at once (tests read it to check bounded memory)."""


def sample_at(feat: torch.Tensor, xy: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear samples (K×C) of a C×h×w map covering an image of size image_hw, at pixel coordinates
    xy (K×2: x = column, y = row; pixel centres at integers)."""
    h, w = image_hw
    grid = torch.stack([(xy[:, 0] + 0.5) / w * 2 - 1, (xy[:, 1] + 0.5) / h * 2 - 1], 1)
    out = F.grid_sample(feat[None].float(), grid.view(1, 1, -1, 2), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0, :, 0].T


def pixel_xy(index: torch.Tensor, width: int) -> torch.Tensor:
    """Flat pixel indices (row-major) as K×2 (x, y) coordinates."""
    return torch.stack([(index % width).float(), (index // width).float()], 1)


def features_at(maps: dict[object, torch.Tensor], index: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """P×C features of one image at flat pixel indices `index` (into H×W): every C×h×w map bilinearly
    upsampled to `size` and read at those pixels, concatenated in the maps' order."""
    xy = pixel_xy(index, size[1])
    out = torch.cat([sample_at(m, xy, size) for m in maps.values()], 1).contiguous()
    PEAK.note("pixel features", out)
    return out


def upsample_concat(maps: dict[object, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """C×H×W: DDPM-Seg's pixel features of one image in full (for small images and checks only)."""
    return torch.cat([F.interpolate(m[None].float(), size=size, mode="bilinear", align_corners=False)[0]
                      for m in maps.values()])
