"""DIFT: dense correspondence from diffusion features by cosine nearest neighbour.

A *describer* turns images into dense descriptor maps (C×h×w, any stride): the diffusion features of
one block at one noise level, averaged over a noise ensemble (`DiffusionDescriber`), or the classical
baselines in `match_bench`. Matching is the same for all of them:

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import match_channels
from .errors import DiffrepError
from .featurizer import Featurizer

CHUNK = 4096  # pixels compared at once: similarity blocks stay ≤ CHUNK × CHUNK floats (64 MB)


# ----------------------------------------------------------------------------- images and coordinates

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
    pad_h, pad_w = -nh % stride, -nw % stride
    if pad_h or pad_w:
        image = F.pad(image[None], (0, pad_w, 0, pad_h), mode="replicate")[0]
    return Prepared(image.contiguous(), (nh, nw), (nw / w, nh / h))


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


# ----------------------------------------------------------------------------- sampling and similarity

def sample_at(feat: torch.Tensor, xy: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear samples (K×C) of a C×h×w map covering an image of size image_hw, at pixel coordinates xy.
    Feature cell j covers image pixels [j·s, (j+1)·s): align_corners=False is exactly that geometry, and
    border padding clamps at the outer cell centres, as bilinear upsampling (F.interpolate) does."""
    h, w = image_hw
    grid = torch.stack([(xy[:, 0] + 0.5) / w * 2 - 1, (xy[:, 1] + 0.5) / h * 2 - 1], 1)
    out = F.grid_sample(feat[None].float(), grid.view(1, 1, -1, 2), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0, :, 0].T


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
    mutual check, whether each match is mutual (None when not checked)."""

    points: torch.Tensor
    similarity: torch.Tensor
    mutual: torch.Tensor | None = None

    def to_json(self, source: torch.Tensor) -> list[dict]:
        rows = []
        for i, (s, t) in enumerate(zip(source.tolist(), self.points.tolist())):
            row = {"source": [round(v, 2) for v in s], "target": [round(v, 2) for v in t],
                   "similarity": round(float(self.similarity[i]), 4)}
            if self.mutual is not None:
                row["mutual"] = bool(self.mutual[i])
            rows.append(row)
        return rows


def match_maps(src_feat: torch.Tensor, src: Prepared, tgt_feat: torch.Tensor, tgt: Prepared, points: torch.Tensor,
               mutual: bool = False, radius: float | None = None, chunk: int = CHUNK) -> Matches:
    """Match input-image `points` of the source to the target, given both images' descriptor maps."""
    src_xy = src.to_model(points)
    queries = sample_at(src_feat, src_xy, src.padded_hw)
    tgt_grid = pixel_grid(tgt.hw)
    idx, sim = nearest(queries, tgt_feat, tgt_grid, tgt.padded_hw, chunk)
    found = tgt_grid[idx]
    keep = None
    if mutual:
        back_grid = pixel_grid(src.hw)
        back, _ = nearest(sample_at(tgt_feat, found, tgt.padded_hw), src_feat, back_grid, src.padded_hw, chunk)
        radius = radius if radius is not None else src.padded_hw[0] / src_feat.shape[-2]
        keep = (back_grid[back] - src_xy).norm(dim=1) <= radius
    return Matches(tgt.to_input(found), sim, keep)


def dense_flow(src_feat: torch.Tensor, src: Prepared, tgt_feat: torch.Tensor, tgt: Prepared,
               chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest target pixel for every source pixel, in the prepared (model) frame: h×w×2 target
    (x, y) and h×w similarity. Costs (h·w)² dot products; chunked, so memory stays bounded."""
    src_grid, tgt_grid = pixel_grid(src.hw), pixel_grid(tgt.hw)
    idx, sim = nearest(sample_at(src_feat, src_grid, src.padded_hw), tgt_feat, tgt_grid, tgt.padded_hw, chunk)
    return tgt_grid[idx].view(*src.hw, 2), sim.view(src.hw)


# ----------------------------------------------------------------------------- describers

def category_prompt(category: str | None) -> str:
    """DIFT's prompt: "a photo of a {category}" when the category is known, else the empty prompt."""
    return f"a photo of a {category}" if category else ""


def default_block(block_names: list[str], latent: bool = False) -> str:
    """DIFT taps SD's up_blocks[1], the second of four decoder blocks, at 1/16 of the image: the default
    for latent UNets with four or more levels. In the small pixel UNets here the decoder blocks are at
    1/2 to 1/1 of the image, where at small t the features mostly predict the added noise; the warps
    sweeps of photos-ddpm (3 levels) and an earlier 4-level scenes-ddpm both put `mid_block` first, so pixel
    UNets default to it. DiT: the middle transformer block."""
    up = [n for n in block_names if n.startswith("up_blocks.") and n.count(".") == 1]
    if up:
        return "up_blocks.1" if latent and len(up) >= 4 else "mid_block" if "mid_block" in block_names else up[0]
    transformer = [n for n in block_names if n.startswith("transformer_blocks.") and n.count(".") == 1]
    if transformer:
        return transformer[len(transformer) // 2]
    raise DiffrepError(f"no default block for this model; pick one of {', '.join(block_names)}")


def load_featurizer(model: str) -> Featurizer:
    from .backbone import load_backbone

    return Featurizer(load_backbone(model))


class DiffusionDescriber:
    """Diffusion features of one or more blocks at noise level t, averaged over `ensemble` noise draws.

    `describe(images, prompt)` → one {descriptor: C×h×w} per image. A descriptor is a block name, or
    several joined by '+' (`mid_block+up_blocks.0`): their maps are concatenated (see `concat_maps`).
    Images of the same prepared size run as one batch. The text prompt reaches conditional UNets only
    (pixel UNets and DiT take none)."""

    def __init__(self, featurizer, blocks: list[str] | str | None = None, t=None, ensemble: int = 4, seed: int = 0,
                 bf16: bool = False, batch_size: int = 8, scales: tuple | list | None = None):
        self.featurizer = featurizer
        backbone = featurizer.backbone
        names = featurizer.block_names()
        if blocks is None:
            blocks = [default_block(names, backbone.is_latent)]
        blocks = [blocks] if isinstance(blocks, str) else list(blocks)
        self.blocks = ["+".join(featurizer.check_blocks(d.split("+"))) for d in blocks]
        self.taps = featurizer.check_blocks([part for d in self.blocks for part in d.split("+")])
        # default: the lightest noise (t = 0; σ_min for EDM), best on validation warps with photos-ddpm
        noise = backbone.noise
        self.t = noise.check(t if t is not None else noise.sigma_min if noise.kind == "edm" else 0)
        if ensemble < 1:
            raise DiffrepError(f"ensemble must be ≥ 1, got {ensemble}")
        self.ensemble, self.seed, self.bf16, self.batch_size = ensemble, seed, bf16, batch_size
        self.channels = backbone.image_channels
        self.stride = max(b.stride for b in featurizer.feature_info())  # what check_images demands
        # DiT takes its own size only; UNets run on any stride multiple.
        self.fixed_size = backbone.image_size if featurizer.is_dit else None
        self.conditional = type(backbone.denoiser).__name__ == "UNet2DConditionModel"
        self.scales = tuple(scales) if scales else default_scales(featurizer)
        if any(not 0 < sc <= 4 for sc in self.scales) or (self.fixed_size and self.scales != (1.0,)):
            raise DiffrepError(f"scales must lie in (0, 4] (and be 1 for DiT, which takes one size); got {self.scales}")

    def describe(self, images: list[torch.Tensor], prompt: str | None = None) -> list[dict[str, torch.Tensor]]:
        """Features at every scale, joined per descriptor by `concat_maps` (finest grid, each scale
        L2-normalised so that each weighs the same)."""
        per_scale = [self._describe_at([self._rescale(im, sc) for im in images], prompt) for sc in self.scales]
        return [{d: concat_maps([ps[i][d] for ps in per_scale]) for d in self.blocks} for i in range(len(images))]

    def _rescale(self, image: torch.Tensor, scale: float) -> torch.Tensor:
        """The image resized by `scale`, each side rounded to a multiple of the model's stride."""
        if scale == 1:
            return image
        h, w = (max(self.stride, round(n * scale / self.stride) * self.stride) for n in image.shape[-2:])
        return F.interpolate(image[None], size=(h, w), mode="bilinear", antialias=scale < 1, align_corners=False)[0]

    def _describe_at(self, images: list[torch.Tensor], prompt: str | None) -> list[dict[str, torch.Tensor]]:
        out: list = [None] * len(images)
        by_size: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(tuple(im.shape), []).append(i)
        for idx in by_size.values():
            for b in range(0, len(idx), self.batch_size):
                part = idx[b:b + self.batch_size]
                batch = torch.stack([match_channels(images[i], self.channels) for i in part])
                feats = self.featurizer.extract(batch, self.t, self.taps, self.ensemble, self.seed, bf16=self.bf16,
                                                prompt=prompt if self.conditional else None)
                for j, i in enumerate(part):
                    out[i] = {d: concat_maps([feats[p][j] for p in d.split("+")]) for d in self.blocks}
        return out


def default_scales(featurizer) -> tuple[float, ...]:
    """Image scales whose features are joined. Pixel UNets: 1, ½, ¼, ⅛ — a small UNet trained on
    small crops sees little context at full size; its features of the shrunken image add it (chosen
    on validation warps, seed 1: PCK@0.1 67.7 at one scale, 86.1 with ¼, 87.2 with ⅛). Latent UNets
    (SD-sized, DIFT's setting) and DiT: the image as it is."""
    pixel_unet = not featurizer.backbone.is_latent and not featurizer.is_dit
    return (1.0, 0.5, 0.25, 0.125) if pixel_unet else (1.0,)


def concat_maps(maps: list[torch.Tensor]) -> torch.Tensor:
    """Several blocks as one descriptor: each map L2-normalised over channels (so every block weighs the
    same in the cosine), bilinearly resized to the finest map, concatenated. One map passes unchanged."""
    if len(maps) == 1:
        return maps[0]
    hw = max(tuple(m.shape[-2:]) for m in maps)
    return torch.cat([F.interpolate(F.normalize(m, dim=0)[None], size=hw, mode="bilinear", align_corners=False)[0]
                      for m in maps])


def match(describer: DiffusionDescriber, source: torch.Tensor, target: torch.Tensor, points, size: int | None = None,
          prompt: str | None = None, mutual: bool = False, chunk: int = CHUNK):
    """Match `points` (K×2, x y) of `source` into `target` (C×H×W images in [-1, 1]) with the describer's
    first block. Returns (Matches, (src Prepared, tgt Prepared), (src map, tgt map))."""
    points = check_points(points, tuple(source.shape[-2:]), "source points")
    size = size or describer.fixed_size
    src, tgt = prepare(source, describer.stride, size), prepare(target, describer.stride, size)
    fs, ft = (d[describer.blocks[0]] for d in describer.describe([src.image, tgt.image], prompt))
    return match_maps(fs, src, ft, tgt, points, mutual, chunk=chunk), (src, tgt), (fs, ft)
