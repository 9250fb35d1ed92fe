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
- Coarse weight w (default 0): the window's similarity is (1 − w)·fine + w·coarse cosine, the cosine of
  the two descriptors joined with weights √(1−w), √w. The coarse similarity peaks at the coarse match
  and falls off smoothly over a cell, so it holds the fine descriptor back from a lookalike on a flat
  or repeated patch, where the fine descriptor alone has no reason to prefer the right one.
- Minimum similarity s (default None: always move): a match moves only where the window's best
  similarity reaches s, and keeps its coarse point elsewhere. When the coarse match is more than a
  window from the truth, nothing in the window is the point, the best similarity is low, and moving
  would be a random step; where the truth is in the window, its fine descriptor nearly repeats the
  source's.
- Mutual (default on): a match moves only where the refined point, matched back into the window around
  the source point (hard argmax, same similarity), lands within a pixel of it. On a flat or repeated
  patch the way back lands elsewhere as easily as the way there, and the match stays coarse.

The fine level of a describer (`refiner(coarse, fine, …)` → `Refiner`, what `match(…, refine=)`,
`predict(…, refine=)` and the commands' `--refine` take):
- FINE is a block (or 'a+b' join) of the coarse describer's own model, described by a second
  `DiffusionDescriber` on the same featurizer (the model is loaded once), at the lightest noise level
  unless t is given (fine detail is what light noise leaves intact), at one image scale (the smaller
  scales add context, not detail), with the coarse describer's ensemble and seed; or 'daisy' or
  'pixels', the classical describers. Its maps cover the same prepared (resized, padded) images.
- A fine level whose cells are not smaller than the coarse descriptor's is refused: it resolves
  nothing the coarse match did not.
- The default radius is half a coarse cell (rounded up, at most MAX_RADIUS): coarse descriptors are
  bilinear blends within a cell, so the true position usually lies within half a cell of the coarse
  match; a wider window mostly gives the less semantic fine descriptor lookalikes to jump to.

Defaults chosen on the validation warps (seed 1, 64 pairs, 1,280 points; `benchmarks/refine_val.py`),
refining photos-ddpm's mid_block (16 px cells at 128²) with 9×9 pixel patches: the hard argmax beat every
soft-argmax at PCK@0.01 (a softmax over a window that holds lookalikes pulls the estimate off the
peak); radius 8 (half a cell) beat 4 and 2 at PCK@0.01; without the mutual check that radius cost 2.6
points at PCK@0.1 against coarse matching, with it 0.4; a coarse weight of 0.5 lowered PCK@0.01 by
3 points. So: half a cell, hard, mutual, coarse weight 0, no minimum similarity (0.7 to 0.98 each
lowered PCK@0.01).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import DiffrepError
from ...features import PEAK, sample_at
from .describe import Describer, DiffusionDescriber, daisy_describer, pixel_describer
from .frames import Prepared, check_points, pixel_grid

MAX_RADIUS = 64         # a window of 129² pixels: beyond that, match at a finer stride instead
WINDOW_PIXELS = 16384   # window pixels compared at once by default (16384 × C floats of fine descriptors)
CLASSICAL = {"daisy": daisy_describer, "pixels": pixel_describer}   # fine levels that need no model


def check_window(radius, temperature) -> None:
    """DiffrepError unless radius is an int in [1, MAX_RADIUS] and temperature is None or positive."""
    if isinstance(radius, bool) or not isinstance(radius, int) or not 1 <= radius <= MAX_RADIUS:
        raise DiffrepError(f"refinement radius must be an integer from 1 to {MAX_RADIUS}, got {radius!r}")
    check_temperature(temperature)


def check_settings(radius, temperature, coarse_weight=0.0, min_similarity=None) -> None:
    """`check_window`, `check_coarse_weight` and `check_min_similarity`, where radius None stands for the
    default that `refiner` takes from the model."""
    if radius is None:
        check_temperature(temperature)
    else:
        check_window(radius, temperature)
    check_coarse_weight(coarse_weight)
    check_min_similarity(min_similarity)


def check_min_similarity(value) -> None:
    """DiffrepError unless the minimum window similarity is None or a cosine in [-1, 1]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
        raise DiffrepError(f"the minimum similarity of a refined match must be a cosine from -1 to 1, got {value!r}")


def check_coarse_weight(weight) -> None:
    """DiffrepError unless the coarse descriptor's weight in the window is a number in [0, 1)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < 1:
        raise DiffrepError(f"the coarse weight of the refinement window must be a number from 0 up to (not "
                           f"including) 1, got {weight!r}")


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


def window_similarity(src_map: torch.Tensor, src_xy: torch.Tensor, src: Prepared, tgt_map: torch.Tensor,
                      cells: torch.Tensor, tgt: Prepared) -> torch.Tensor:
    """Cosine similarity (k×m) of each source point's descriptor (k points) with the descriptors at its
    m window pixels (`cells`, k×m×2 target pixels), both sampled bilinearly from the maps."""
    k, m, _ = cells.shape
    queries = F.normalize(sample_at(src_map, src_xy, src.padded_hw), dim=1)
    keys = F.normalize(sample_at(tgt_map, cells.reshape(-1, 2), tgt.padded_hw), dim=1).view(k, m, -1)
    sim = torch.einsum("kc,kmc->km", queries, keys)
    PEAK.note("refinement window", keys, sim)
    return sim


def refine_matches(coarse: torch.Tensor, src_xy: torch.Tensor, src_fine: torch.Tensor, src: Prepared,
                   tgt_fine: torch.Tensor, tgt: Prepared, radius: int, temperature: float | None = None,
                   chunk: int | None = None, coarse_maps: tuple[torch.Tensor, torch.Tensor] | None = None,
                   coarse_weight: float = 0.0, min_similarity: float | None = None,
                   mutual: bool = False) -> torch.Tensor:
    """Refined target positions (K×2, model frame) of source points `src_xy` whose coarse matches are
    `coarse` (both K×2 in the prepared frames of `src` and `tgt`): the soft-argmax (hard when temperature
    is None) of fine-descriptor cosine similarity over the (2r+1)² target pixels around each coarse match,
    blended with the coarse maps' (source, target) cosine at `coarse_weight` (see the module docstring).
    A match keeps its coarse position where its window peaks below `min_similarity`, and, with `mutual`,
    where the refined point's own best match in the window around the source point is not within a pixel
    of it. `chunk` points are compared at once (default: as many as keep ≤ WINDOW_PIXELS window pixels)."""
    check_settings(radius, temperature, coarse_weight, min_similarity)
    check_fine_maps(src_fine, tgt_fine)
    if coarse_weight and coarse_maps is None:
        raise DiffrepError(f"a coarse weight of {coarse_weight:g} needs the coarse descriptor maps")
    coarse = check_points(coarse, tgt.hw, "coarse matches")
    if len(src_xy) != len(coarse):
        raise DiffrepError(f"{len(src_xy)} source points but {len(coarse)} coarse matches")
    maps = (src_fine, tgt_fine), (coarse_maps if coarse_weight else None)
    step = chunk or max(1, WINDOW_PIXELS // (2 * radius + 1)**2)
    out = torch.empty_like(coarse)
    for k0 in range(0, len(coarse), step):
        centre, points = coarse[k0:k0 + step], src_xy[k0:k0 + step]
        sim = _window(maps, coarse_weight, points, src, centre, tgt, radius)
        moved = centre + soft_argmax(sim, temperature)
        keep = torch.ones(len(centre), dtype=torch.bool)
        if min_similarity is not None:
            keep &= sim.flatten(1).amax(1) >= min_similarity
        if mutual:   # back from the refined point into the window around the source point: its best pixel
            back_maps = maps[0][::-1], None if maps[1] is None else maps[1][::-1]
            back = _window(back_maps, coarse_weight, moved, tgt, points, src, radius)
            keep &= soft_argmax(back, None).norm(dim=1) <= 1
        out[k0:k0 + step] = torch.where(keep[:, None], moved, centre)
    return out


def _window(maps, coarse_weight: float, points: torch.Tensor, frame: Prepared, centre: torch.Tensor,
            other: Prepared, radius: int) -> torch.Tensor:
    """k×n×n similarities of `points` (in `frame`) with the (2r+1)² pixels of `other` around each `centre`:
    the fine maps' cosine, blended with the coarse maps' at `coarse_weight`; −∞ off the matchable image.
    `maps`: ((fine of frame, fine of other), (coarse of frame, coarse of other) or None)."""
    n = 2 * radius + 1
    cells = centre[:, None] + (pixel_grid((n, n)) - radius)            # row-major, as soft_argmax reads a window
    limit = torch.tensor([other.hw[1] - 0.5, other.hw[0] - 0.5])       # the matchable pixels, as check_points
    inside = ((cells >= -0.5) & (cells <= limit)).all(-1)
    (fine_a, fine_b), coarse = maps
    sim = window_similarity(fine_a, points, frame, fine_b, cells, other)
    if coarse is not None:
        sim = (1 - coarse_weight) * sim + coarse_weight * window_similarity(coarse[0], points, frame, coarse[1],
                                                                            cells, other)
    return sim.masked_fill(~inside, -float("inf")).view(-1, n, n)


@dataclass
class Refinement:
    """How `match_maps` refines its coarse matches (see the module docstring); checked when made."""

    src_fine: torch.Tensor               # C×h×w fine descriptor map of the source's prepared (padded) image
    tgt_fine: torch.Tensor               # C×h'×w' of the target's; any stride, same channels
    radius: int                          # window of (2r+1)² target pixels around each coarse match
    temperature: float | None = None     # soft-argmax temperature; None: hard argmax (pixel centres)
    coarse_weight: float = 0.0           # weight of the coarse descriptor's cosine in the window
    min_similarity: float | None = None  # a window peaking below it leaves its match coarse; None: always move
    mutual: bool = True                  # a refined point must map back within a pixel of its source point

    def __post_init__(self):
        check_settings(self.radius, self.temperature, self.coarse_weight, self.min_similarity)
        check_fine_maps(self.src_fine, self.tgt_fine)

    def apply(self, coarse: torch.Tensor, src_xy: torch.Tensor, src: Prepared, tgt: Prepared,
              coarse_maps: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Refined positions of `coarse` matches; `coarse_maps` (source, target) are the coarse descriptor
        maps, needed when the coarse weight is not 0."""
        return refine_matches(coarse, src_xy, self.src_fine, src, self.tgt_fine, tgt, self.radius, self.temperature,
                              coarse_maps=coarse_maps, coarse_weight=self.coarse_weight,
                              min_similarity=self.min_similarity, mutual=self.mutual)


# ----------------------------------------------------------------------------- the fine level of a describer


@dataclass
class Refiner:
    """A fine describer and how its maps refine each pair's coarse matches (see the module docstring);
    made by `refiner`, checked when made."""

    describer: Describer                 # the fine level: its first descriptor, one image scale
    radius: int                          # window of (2r+1)² target pixels around each coarse match
    temperature: float | None = None     # soft-argmax temperature; None: hard argmax (pixel centres)
    coarse_weight: float = 0.0           # weight of the coarse descriptor's cosine in the window
    min_similarity: float | None = None  # a window peaking below it leaves its match coarse; None: always move
    mutual: bool = True                  # a refined point must map back within a pixel of its source point

    def __post_init__(self):
        check_settings(self.radius, self.temperature, self.coarse_weight, self.min_similarity)

    @property
    def fine(self) -> str:
        return self.describer.blocks[0]

    def maps(self, images: list[torch.Tensor], prompt: str | None = None) -> list[torch.Tensor]:
        """The fine map of each prepared image (C×h×w), in the order given."""
        return [d[self.fine] for d in self.describer.describe(images, prompt)]

    def refinement(self, src_fine: torch.Tensor, tgt_fine: torch.Tensor) -> Refinement:
        return Refinement(src_fine, tgt_fine, self.radius, self.temperature, self.coarse_weight, self.min_similarity,
                          self.mutual)

    def settings(self) -> dict:
        """What a results JSON records: the fine descriptor, its noise level (None for daisy / pixels), its
        cell in pixels, the window and the temperature (None: the hard argmax)."""
        return {"fine": self.fine, "t": getattr(self.describer, "t", None), "cell": self.describer.cell(self.fine),
                "radius": self.radius, "window": 2 * self.radius + 1, "temperature": self.temperature,
                "argmax": "hard" if self.temperature is None else "soft", "coarse_weight": self.coarse_weight,
                "min_similarity": self.min_similarity, "mutual": self.mutual}


def refiner(coarse: Describer, fine: str, t=None, radius: int | None = None,
            temperature: float | None = None, coarse_weight: float = 0.0,
            min_similarity: float | None = None, mutual: bool = True) -> Refiner:
    """The refinement of `coarse`'s matches (its first descriptor) by the fine level `fine`: 'daisy',
    'pixels', or a block or 'a+b' join of the coarse describer's model at noise level t (default the
    lightest). `radius` None: half a coarse cell. Refused when `fine` has no smaller cells than the coarse
    descriptor. `coarse_weight`: the coarse cosine's share of the window's similarity; `min_similarity`:
    the window peak a match needs to move; `mutual`: a refined point must map back to its source point."""
    check_settings(radius, temperature, coarse_weight, min_similarity)   # before any describer is built
    if fine in CLASSICAL:
        if t is not None:
            raise DiffrepError(f"a noise level (--refine-t {t}) is for a diffusion block; {fine} has none")
        describer = CLASSICAL[fine]()
    elif isinstance(coarse, DiffusionDescriber):
        noise = coarse.featurizer.backbone.noise
        try:
            describer = DiffusionDescriber(coarse.featurizer, fine, noise.lightest if t is None else t, coarse.ensemble,
                                           coarse.seed, coarse.precision, batch_size=coarse.batch_size, scales=[1])
        except DiffrepError as err:   # an unknown block or a t off the schedule: say it is the fine level's
            raise DiffrepError(f"--refine {fine}: {err}") from None
    else:
        raise DiffrepError(f"refining with block {fine!r} needs a diffusion describer to take the model from; "
                           f"refine this describer with daisy or pixels")
    fine_cell, coarse_cell = describer.cell(describer.blocks[0]), coarse.cell(coarse.blocks[0])
    if fine_cell >= coarse_cell:
        finer = _finer_levels(coarse, coarse_cell)
        raise DiffrepError(f"--refine {fine} is not finer than the coarse descriptor {coarse.blocks[0]} (cells of "
                           f"{fine_cell:g} and {coarse_cell:g} px); "
                           + (f"finer: {', '.join(finer)}" if finer else "nothing here is finer"))
    radius = radius if radius is not None else min(MAX_RADIUS, max(1, math.ceil(coarse_cell / 2)))
    return Refiner(describer, radius, temperature, coarse_weight, min_similarity, mutual)


def _finer_levels(coarse: Describer, coarse_cell: float) -> list[str]:
    """The top-level blocks and classical describers whose cells are smaller than `coarse_cell`."""
    blocks = [b.name for b in coarse.featurizer.feature_info() if b.top_level and b.stride < coarse_cell] \
        if isinstance(coarse, DiffusionDescriber) else []
    return blocks + (list(CLASSICAL) if coarse_cell > 1 else [])
