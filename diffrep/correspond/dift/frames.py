"""Images and coordinates shared by the matcher and its refinement: an image resized and padded for
a describer (`Prepared`), the checks on points, and the grid of pixel centres.

Points are (x, y) = (column, row) in pixels of the image as given, pixel centres at integers (the
SPair-71k convention). Padding (bottom and right) moves no pixel, so only the resize scales
coordinates, and `Prepared` maps them back exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...data import pad_to_multiple
from ...errors import DiffrepError


@dataclass
class Prepared:
    """An image ready for a describer: resized by `scale` (per axis), padded to a stride multiple."""

    image: torch.Tensor   # C×H'×W', padded
    hw: tuple[int, int]   # size after the resize, before the padding: the pixels that may be matched
    scale: tuple[float, float]  # (x, y): model pixels per input pixel

    @property
    def padded_hw(self) -> tuple[int, int]:
        return tuple(self.image.shape[-2:])

    def to_model(self, xy: torch.Tensor) -> torch.Tensor:
        """Input-image coordinates to this image's coordinates (pixel centres map to pixel centres)."""
        return (xy + 0.5) * xy.new_tensor(self.scale) - 0.5

    def to_input(self, xy: torch.Tensor) -> torch.Tensor:
        return (xy + 0.5) / xy.new_tensor(self.scale) - 0.5


def prepare(image: torch.Tensor, stride: int, size: int | None = None) -> Prepared:
    """Resize (when `size` is given) and pad `image` (C×H×W) to a multiple of `stride`."""
    if image.ndim != 3:
        raise DiffrepError(f"expected one C×H×W image, got shape {tuple(image.shape)}")
    h, w = image.shape[-2:]
    if size is not None and (h, w) != (size, size):
        image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    nh, nw = image.shape[-2:]
    return Prepared(pad_to_multiple(image, stride).contiguous(), (nh, nw), (nw / w, nh / h))


def check_points(points: torch.Tensor, hw: tuple[int, int], what: str = "points") -> torch.Tensor:
    """Points as a K×2 float tensor (x, y), each inside an image of size hw; else DiffrepError."""
    points = torch.as_tensor(points, dtype=torch.float32)
    if points.ndim != 2 or points.shape[1] != 2:
        raise DiffrepError(f"{what} must be K×2 (x, y), got shape {tuple(points.shape)}")
    h, w = hw
    outside = ((points < -0.5) | (points > points.new_tensor([w - 0.5, h - 0.5]))).any(1)
    if outside.any():
        bad = ", ".join(f"({x:g}, {y:g})" for x, y in points[outside][:5].tolist())
        raise DiffrepError(f"{what} outside the {w}×{h} image (x in [0, {w - 1}], y in [0, {h - 1}]): {bad}")
    return points


def pixel_grid(hw: tuple[int, int]) -> torch.Tensor:
    """Every pixel centre of an h×w image as an (h·w)×2 tensor of (x, y), row-major."""
    ys, xs = torch.meshgrid(torch.arange(hw[0]), torch.arange(hw[1]), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1).float()
