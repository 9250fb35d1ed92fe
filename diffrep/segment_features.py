"""Pixel features for DDPM-Seg, in bounded memory.

A *source* turns a batch of images into feature maps {key: B×C×h×w} at each map's own resolution:
`DiffusionMaps` (blocks × noise levels of a diffusers denoiser, one fixed noise shared by every image
and every t, as DDPM-Seg does) or `RawPixelMaps` (the baseline: RGB of a small neighbourhood plus
the pixel's position). A pixel's feature is every map bilinearly upsampled to the image size and
concatenated; `features_at` computes that only at the pixels asked for (`grid_sample` at pixel
centres equals `F.interpolate(..., align_corners=False)` there), so the full C×H×W stack is never
built. `FeatureCache` keeps each image's maps on disk (safetensors, float16: half the bytes, and
activations of these networks sit far inside float16's range) and reads one image at a time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import match_channels
from .errors import DiffrepError
from .featstore import feature_key, load_features, save_features
from .featurizer import Featurizer

DDPM_SEG_TS = (50, 150, 250)   # DDPM-Seg's timesteps (of 1000)
FLOAT16_MAX = 65504.0


class PeakBytes:
    """The largest feature tensor held at once, by what held it: how the tests check bounded memory."""

    def __init__(self):
        self.peak: dict[str, int] = {}

    def note(self, what: str, *tensors: torch.Tensor) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors)
        self.peak[what] = max(self.peak.get(what, 0), size)


PEAK = PeakBytes()


# ----------------------------------------------------------------------------- defaults

def default_blocks(featurizer: Featurizer) -> list[str]:
    """DDPM-Seg taps the decoder: here the mid block and every up block but the last (the last one
    sits next to the noise prediction). Models without up blocks fall back to the featurizer's list."""
    names = featurizer.block_names(top_level_only=True)
    ups = [n for n in names if n.startswith("up_blocks.")]
    if not ups:
        return featurizer.default_blocks()
    return (["mid_block"] if "mid_block" in names else []) + (ups[:-1] or ups)


def default_levels(noise) -> list:
    """t ∈ {50, 150, 250} for VP models with a 1000-step schedule (scaled for other lengths); for EDM
    models the σ with the same signal-to-noise ratio under DDPM's linear schedule."""
    if noise.kind == "vp":
        return sorted({min(noise.num_steps - 1, round(t * noise.num_steps / 1000)) for t in DDPM_SEG_TS})
    from diffusers import DDPMScheduler

    ab = DDPMScheduler().alphas_cumprod
    sigmas = [float(((1 - ab[t]) / ab[t]).sqrt()) for t in DDPM_SEG_TS]
    return [round(min(max(s, noise.sigma_min), noise.sigma_max), 4) for s in sigmas]


# ----------------------------------------------------------------------------- sources

class DiffusionMaps:
    """Feature maps of a denoiser at blocks × levels: {feature_key(t, block): B×C×h×w}."""

    def __init__(self, featurizer: Featurizer, blocks: list[str], ts: list, ensemble: int = 1, seed: int = 0,
                 shared_noise: bool = True, bf16: bool = False, weights: str = "trained"):
        self.featurizer = featurizer
        self.blocks = featurizer.check_blocks(blocks)
        self.ts = [featurizer.backbone.noise.check(t) for t in ts]
        self.ensemble, self.seed, self.shared_noise, self.bf16 = ensemble, seed, shared_noise, bf16
        self.weights = weights   # 'trained' or 'random': part of the cache's identity
        channels = {b.name: b.channels for b in featurizer.feature_info()}
        self.channels = {feature_key(t, b): channels[b] for t in self.ts for b in self.blocks}

    def describe(self) -> dict:
        return {"kind": "diffusion", "model": self.featurizer.backbone.source, "weights": self.weights,
                "blocks": self.blocks, "ts": self.ts, "ensemble": self.ensemble, "seed": self.seed,
                "shared_noise": self.shared_noise, "bf16": self.bf16}

    @torch.no_grad()
    def maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        backbone = self.featurizer.backbone
        images = match_channels(images, backbone.image_channels)
        self.featurizer.check_images(images)
        latents = backbone.encode(images.to(backbone.device))
        out = {}
        for t in self.ts:   # the same seed for every batch and t: one fixed noise, as DDPM-Seg
            feats = self.featurizer.extract_latents(latents, t, self.blocks, self.ensemble, self.seed,
                                                    self.shared_noise, self.bf16)
            out.update({feature_key(t, b): f for b, f in feats.items()})
        return out


class RawPixelMaps:
    """The raw-pixel baseline: the RGB values of a (2r+1)² neighbourhood (edges replicated) and the
    pixel's (y, x) position in [-1, 1], at full resolution."""

    def __init__(self, radius: int = 2, image_channels: int = 3):
        self.radius = radius
        self.channels = {"pixels": image_channels * (2 * radius + 1) ** 2 + 2}

    def describe(self) -> dict:
        return {"kind": "raw_pixels", "radius": self.radius}

    def maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        n, c, h, w = images.shape
        side = 2 * self.radius + 1
        padded = F.pad(images, (self.radius,) * 4, mode="replicate")
        patches = F.unfold(padded, side).view(n, c * side * side, h, w)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        pos = torch.stack([ys, xs]).expand(n, -1, -1, -1)
        return {"pixels": torch.cat([patches, pos], 1)}


def total_channels(source) -> int:
    return sum(source.channels.values())


# ----------------------------------------------------------------------------- per-pixel features

def features_at(maps: dict[str, torch.Tensor], index: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """P×C features of one image at flat pixel indices `index` (into H×W): every C×h×w map bilinearly
    upsampled to `size` and read at those pixels, concatenated in the maps' order."""
    h, w = size
    ys, xs = (index // w).float(), (index % w).float()
    # pixel centres in grid_sample's normalised coordinates (align_corners=False)
    grid = torch.stack([(2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1], -1).view(1, 1, -1, 2)
    parts = [F.grid_sample(m[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0]
             for m in maps.values()]
    out = torch.cat(parts).T.contiguous()
    PEAK.note("pixel features", out)
    return out


def upsample_concat(maps: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """C×H×W: DDPM-Seg's pixel features of one image in full (for small images and checks only)."""
    return torch.cat([F.interpolate(m[None].float(), size=size, mode="bilinear", align_corners=False)[0]
                      for m in maps.values()])


# ----------------------------------------------------------------------------- on-disk cache

def images_digest(images: torch.Tensor) -> str:
    return hashlib.sha1(images.contiguous().numpy().tobytes()).hexdigest()[:16]


class FeatureCache:
    """Each image's maps in `folder/{i:05d}.safetensors` (float16); reused when `cache.json` matches
    the source and the images. `maps(i, keys)` reads one image back (float16; `features_at` widens)."""

    def __init__(self, folder: str | Path, source, images: torch.Tensor, batch_size: int = 8, desc: str = "features"):
        self.folder = Path(folder)
        self.n = len(images)
        self.size = tuple(images.shape[-2:])
        meta = {"source": source.describe(), "images": images_digest(images), "n": self.n}
        if self._matches(meta):
            print(f"reusing cached features {self.folder}")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "cache.json").unlink(missing_ok=True)
        for start in tqdm(range(0, self.n, batch_size), desc=desc, dynamic_ncols=True):
            batch = source.maps(images[start:start + batch_size])
            PEAK.note("extracted batch", *batch.values())
            for j in range(len(next(iter(batch.values())))):
                half = {k: v[j].clamp(-FLOAT16_MAX, FLOAT16_MAX).half() for k, v in batch.items()}
                save_features(self.folder / f"{start + j:05d}.safetensors", half, {"index": start + j})
        (self.folder / "cache.json").write_text(json.dumps(meta))   # written last: marks the cache complete

    def _matches(self, meta: dict) -> bool:
        path = self.folder / "cache.json"
        if not path.is_file() or json.loads(path.read_text()) != json.loads(json.dumps(meta)):
            return False
        return all((self.folder / f"{i:05d}.safetensors").is_file() for i in range(self.n))

    def __len__(self) -> int:
        return self.n

    def maps(self, i: int, keys: list[str]) -> dict[str, torch.Tensor]:
        """Image i's maps for `keys`, in that order (the order fixes the feature's channel layout)."""
        tensors = load_features(self.folder / f"{i:05d}.safetensors")[0]
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise DiffrepError(f"cached features {self.folder} lack {missing[:3]}; delete the folder to rebuild it")
        tensors = {k: tensors[k] for k in keys}
        PEAK.note("cached image", *tensors.values())
        return tensors
