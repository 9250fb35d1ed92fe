"""DIFT's matcher: dense correspondence by cosine nearest neighbour of descriptor maps.

A describer (`describe.py`) turns images into dense descriptor maps (C×h×w, any stride): diffusion
features, raw-pixel patches or DAISY. Matching is the same for all of them:

    source points ──► bilinear samples of the source map (grid_sample)
    target map    ──► bilinear samples at every target pixel centre ("upsampled to the image")
    cosine similarity, nearest neighbour over the target pixels, computed in chunks

Decisions:
- Points are (x, y) = (column, row) in pixels of the image as given, pixel centres at integers (the
  SPair-71k convention).
- Any image size: each image is optionally resized to size×size (`size`), then padded at the bottom
  and right (edge values) to a multiple of the describer's stride. Padding moves no pixel, so only the
  resize scales coordinates, and they are mapped back exactly; padded pixels are never match targets.
- Target features are never materialised at full resolution: each chunk of target pixels is sampled
  from the low-resolution map when it is compared, so memory is bounded by `chunk` whatever the image size.
- Mutual check (optional): a match p→q is kept when q's own nearest neighbour in the whole source
  image lies within `radius` pixels of p (default: the describer's stride, the scale features resolve).
- Refinement (optional, `refine.py`): each coarse match (of the given points, or of every pixel in
  dense flow) is moved to the best sub-pixel position of a fine descriptor inside a small window around
  it. The mutual check is made on the coarse matches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...features import sample_at
from .frames import Prepared, check_points, pixel_grid, prepare
from .refine import Refinement, Refiner

CHUNK = 4096  # pixels compared at once: similarity blocks stay ≤ CHUNK × CHUNK floats (64 MB)


# ----------------------------------------------------------------------------- sampling and similarity

def nearest(queries: torch.Tensor, feat: torch.Tensor, candidates: torch.Tensor, image_hw: tuple[int, int],
            chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query descriptor (K×C), the index of the most cosine-similar of `candidates` (pixel
    coordinates M×2 in the image that `feat` covers) and that similarity. Candidates are sampled and
    compared `chunk` at a time; queries are split into chunks too (dense flow has one per pixel)."""
    best_sim = torch.full((len(queries),), -float("inf"))
    best_idx = torch.zeros(len(queries), dtype=torch.long)
    q_all = F.normalize(queries.float(), dim=1)
    for c0 in range(0, len(candidates), chunk):
        keys = F.normalize(sample_at(feat, candidates[c0:c0 + chunk], image_hw), dim=1)
        for q0 in range(0, len(q_all), chunk):
            sim, idx = (q_all[q0:q0 + chunk] @ keys.T).max(1)
            better = sim > best_sim[q0:q0 + chunk]  # strict: ties keep the earlier candidate, as one argmax would
            best_sim[q0:q0 + chunk] = torch.where(better, sim, best_sim[q0:q0 + chunk])
            best_idx[q0:q0 + chunk] = torch.where(better, idx + c0, best_idx[q0:q0 + chunk])
    return best_idx, best_sim


# ----------------------------------------------------------------------------- matching

@dataclass
class Matches:
    """Target points (K×2, input-image x, y) for K source points, their cosine similarity and, with the
    mutual check, whether each match is mutual (None when not checked). A refined match keeps its
    coarse point too, so one matching run gives both (`unrefined`)."""

    points: torch.Tensor
    similarity: torch.Tensor
    mutual: torch.Tensor | None = None
    coarse: torch.Tensor | None = None   # K×2 target points before refinement; None when not refined

    def unrefined(self) -> Matches:
        """The coarse matches alone (these matches when they were not refined)."""
        return self if self.coarse is None else Matches(self.coarse, self.similarity, self.mutual)

    def to_json(self, source: torch.Tensor) -> list[dict]:
        rows = []
        for i, (s, t) in enumerate(zip(source.tolist(), self.points.tolist())):
            row = {"source": [round(v, 2) for v in s], "target": [round(v, 2) for v in t],
                   "similarity": round(float(self.similarity[i]), 4)}
            if self.coarse is not None:
                row["coarse"] = [round(v, 2) for v in self.coarse[i].tolist()]
            if self.mutual is not None:
                row["mutual"] = bool(self.mutual[i])
            rows.append(row)
        return rows


def match_maps(src_feat: torch.Tensor, src: Prepared, tgt_feat: torch.Tensor, tgt: Prepared, points: torch.Tensor,
               mutual: bool = False, radius: float | None = None, chunk: int = CHUNK,
               refine: Refinement | None = None) -> Matches:
    """Match input-image `points` of the source to the target, given both images' descriptor maps;
    with `refine`, each match is then refined to sub-pixel precision with its fine maps."""
    src_xy = src.to_model(points)
    queries = sample_at(src_feat, src_xy, src.padded_hw)
    tgt_grid = pixel_grid(tgt.hw)
    idx, sim = nearest(queries, tgt_feat, tgt_grid, tgt.padded_hw, chunk)
    found = tgt_grid[idx]
    keep, coarse = None, None
    if mutual:
        back_grid = pixel_grid(src.hw)
        back, _ = nearest(sample_at(tgt_feat, found, tgt.padded_hw), src_feat, back_grid, src.padded_hw, chunk)
        radius = radius if radius is not None else src.padded_hw[0] / src_feat.shape[-2]
        keep = (back_grid[back] - src_xy).norm(dim=1) <= radius
    if refine is not None:
        found, coarse = refine.apply(found, src_xy, src, tgt, (src_feat, tgt_feat)), tgt.to_input(found)
    return Matches(tgt.to_input(found), sim, keep, coarse)


def dense_flow(src_feat: torch.Tensor, src: Prepared, tgt_feat: torch.Tensor, tgt: Prepared,
               chunk: int = CHUNK, refine: Refinement | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest target pixel for every source pixel, in the prepared (model) frame: h×w×2 target
    (x, y) and h×w similarity. Costs (h·w)² dot products; chunked, so memory stays bounded. With
    `refine`, every pixel's match is then refined (sub-pixel with a soft-argmax) as `match_maps` does."""
    src_grid, tgt_grid = pixel_grid(src.hw), pixel_grid(tgt.hw)
    idx, sim = nearest(sample_at(src_feat, src_grid, src.padded_hw), tgt_feat, tgt_grid, tgt.padded_hw, chunk)
    found = tgt_grid[idx]
    if refine is not None:
        found = refine.apply(found, src_grid, src, tgt, (src_feat, tgt_feat))
    return found.view(*src.hw, 2), sim.view(src.hw)


def describe_pair(describer, source: torch.Tensor, target: torch.Tensor, size: int | None = None,
                  prompt: str | None = None, refine: Refiner | None = None):
    """Both images prepared for the describer and described: ((src, tgt) Prepared, (src, tgt) coarse maps
    of its first descriptor, the Refinement of their matches or None without `refine`)."""
    size = size or describer.fixed_size
    src, tgt = prepare(source, describer.stride, size), prepare(target, describer.stride, size)
    fs, ft = (d[describer.blocks[0]] for d in describer.describe([src.image, tgt.image], prompt))
    refinement = None if refine is None else refine.refinement(*refine.maps([src.image, tgt.image], prompt))
    return (src, tgt), (fs, ft), refinement


def match(describer, source: torch.Tensor, target: torch.Tensor, points, size: int | None = None,
          prompt: str | None = None, mutual: bool = False, chunk: int = CHUNK, refine: Refiner | None = None):
    """Match `points` (K×2, x y) of `source` into `target` (C×H×W images in [-1, 1]) with the describer's
    first descriptor; with `refine` (`refine.refiner(describer, fine, …)`), refine each match with the
    fine maps of the same prepared images (the coarse points stay in `Matches.coarse`).
    Returns (Matches, (src Prepared, tgt Prepared), (src map, tgt map)): the coarse maps."""
    points = check_points(points, tuple(source.shape[-2:]), "source points")
    (src, tgt), (fs, ft), refinement = describe_pair(describer, source, target, size, prompt, refine)
    return match_maps(fs, src, ft, tgt, points, mutual, chunk=chunk, refine=refinement), (src, tgt), (fs, ft)
