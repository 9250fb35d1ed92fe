"""Correspondence at pixel precision: coarse-to-fine refinement of the matcher's matches.

The coarse matcher (`matching.py`) lands on target pixel centres, guided by descriptors at stride
8–32 that rarely resolve even the nearest one. Refinement looks again near each coarse match with a
fine descriptor map (any describer's: a high-resolution decoder block at small t, DAISY, raw pixels):

    source point                 ──► fine descriptor (bilinear sample)
    (2r+1)² target pixels around ──► fine descriptors ──► cosine similarity window
    its coarse match
    soft-argmax of the window    ──► softmax(sim / temperature)-weighted mean of the pixel coordinates
                                     (temperature None: the hard argmax, a pixel centre)

Decisions:
- Everything happens in the prepared (model) frame, as in the coarse matcher; the fine maps cover the
  same padded images as the coarse ones, at whatever stride they have.
- Window pixels outside the matchable image (padding, or beyond an edge) get similarity −∞: no weight,
  never the argmax. The window is not shifted inside, so a match at the border keeps its centre, but
  its soft-argmax sees one side only and leans inward.
- The window is centred on the coarse match and the softmax weighs all of it, so a high temperature
  drags the estimate toward the window's centre: useful temperatures make the peak about a pixel wide.
- Memory: `chunk` points at a time, each with its window: at most chunk × (2r+1)² similarities and as
  many fine descriptors at once. By default chunk keeps ≤ WINDOW_PIXELS window pixels, whatever r.
- The similarity a match reports and the mutual check stay the coarse ones: refinement moves a match
  within its window, it does not decide whether the match is right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import DiffrepError
from ...features import PEAK, sample_at
from .matching import Prepared, check_points, pixel_grid

MAX_RADIUS = 64         # a window of 129² pixels: beyond that, match at a finer stride instead
WINDOW_PIXELS = 16384   # window pixels compared at once by default (16384 × C floats of fine descriptors)


def check_window(radius, temperature) -> None:
    """DiffrepError unless radius is an int in [1, MAX_RADIUS] and temperature is None or positive."""
    if isinstance(radius, bool) or not isinstance(radius, int) or not 1 <= radius <= MAX_RADIUS:
        raise DiffrepError(f"refinement radius must be an integer from 1 to {MAX_RADIUS}, got {radius!r}")
    check_temperature(temperature)


def check_temperature(temperature) -> None:
    if temperature is None:
        return
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise DiffrepError(f"soft-argmax temperature must be a positive number (or None for the hard argmax), "
                           f"got {temperature!r}")


def check_fine_maps(src_fine: torch.Tensor, tgt_fine: torch.Tensor) -> None:
    for what, m in (("source", src_fine), ("target", tgt_fine)):
        if m.ndim != 3:
            raise DiffrepError(f"the {what} fine descriptor map must be C×h×w, got shape {tuple(m.shape)}")
    if src_fine.shape[0] != tgt_fine.shape[0]:
        raise DiffrepError(f"fine descriptor maps differ in channels: source {src_fine.shape[0]}, "
                           f"target {tgt_fine.shape[0]}")


def soft_argmax(sim: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """Sub-pixel positions in windows of similarities (…×h×w): the softmax(sim / temperature)-weighted
    mean of the window's pixel coordinates, as (x, y) offsets from the window's centre (…×2).
    Temperature None gives the hard argmax (the first of equal maxima, row-major)."""
    check_temperature(temperature)
    *lead, h, w = sim.shape
    offsets = pixel_grid((h, w)) - torch.tensor([(w - 1) / 2, (h - 1) / 2])
    flat = sim.float().reshape(*lead, h * w)
    if temperature is None:
        return offsets[flat.argmax(-1)]
    return torch.softmax(flat / temperature, dim=-1) @ offsets


def refine_matches(coarse: torch.Tensor, src_xy: torch.Tensor, src_fine: torch.Tensor, src: Prepared,
                   tgt_fine: torch.Tensor, tgt: Prepared, radius: int, temperature: float | None = None,
                   chunk: int | None = None) -> torch.Tensor:
    """Refined target positions (K×2, model frame) of source points `src_xy` whose coarse matches are
    `coarse` (both K×2 in the prepared frames of `src` and `tgt`): the soft-argmax (hard when temperature
    is None) of fine-descriptor cosine similarity over the (2r+1)² target pixels around each coarse match.
    `chunk` points are compared at once (default: as many as keep ≤ WINDOW_PIXELS window pixels)."""
    check_window(radius, temperature)
    check_fine_maps(src_fine, tgt_fine)
    coarse = check_points(coarse, tgt.hw, "coarse matches")
    if len(src_xy) != len(coarse):
        raise DiffrepError(f"{len(src_xy)} source points but {len(coarse)} coarse matches")
    n = 2 * radius + 1
    offsets = pixel_grid((n, n)) - radius                       # row-major, as soft_argmax reads a window
    limit = torch.tensor([tgt.hw[1] - 0.5, tgt.hw[0] - 0.5])    # the matchable pixels, as check_points
    queries = F.normalize(sample_at(src_fine, src_xy, src.padded_hw), dim=1)
    step = chunk or max(1, WINDOW_PIXELS // n**2)
    out = torch.empty_like(coarse)
    for k0 in range(0, len(coarse), step):
        centre = coarse[k0:k0 + step]
        cells = centre[:, None] + offsets                        # k×n²×2 target pixels
        inside = ((cells >= -0.5) & (cells <= limit)).all(-1)
        keys = F.normalize(sample_at(tgt_fine, cells.view(-1, 2), tgt.padded_hw), dim=1).view(len(centre), n * n, -1)
        sim = torch.einsum("kc,kmc->km", queries[k0:k0 + step], keys).masked_fill(~inside, -float("inf"))
        PEAK.note("refinement window", keys, sim)
        out[k0:k0 + step] = centre + soft_argmax(sim.view(-1, n, n), temperature)
    return out


@dataclass
class Refinement:
    """How `match_maps` refines its coarse matches (see the module docstring); checked when made."""

    src_fine: torch.Tensor               # C×h×w fine descriptor map of the source's prepared (padded) image
    tgt_fine: torch.Tensor               # C×h'×w' of the target's; any stride, same channels
    radius: int                          # window of (2r+1)² target pixels around each coarse match
    temperature: float | None = None     # soft-argmax temperature; None: hard argmax (pixel centres)

    def __post_init__(self):
        check_window(self.radius, self.temperature)
        check_fine_maps(self.src_fine, self.tgt_fine)

    def apply(self, coarse: torch.Tensor, src_xy: torch.Tensor, src: Prepared, tgt: Prepared) -> torch.Tensor:
        return refine_matches(coarse, src_xy, self.src_fine, src, self.tgt_fine, tgt, self.radius, self.temperature)
