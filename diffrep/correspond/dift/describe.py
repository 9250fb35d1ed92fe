"""Describers: dense descriptor maps of images of any size, from any feature source.

`Describer(source, …).describe(images, prompt)` → one {descriptor: C×h×w} per image. A descriptor is
one of the source's maps or several joined by '+' (`mid_block+up_blocks.0`): their maps are
L2-normalised and concatenated (`concat_maps`). Images of the same size run as one batch; with
several image scales the image is also described shrunk (or grown) and the scales are joined the
same way, on the finest grid.

- `DiffusionDescriber`: DIFT's descriptor, diffusion features of blocks at one noise level averaged
  over a noise ensemble (8 draws, DIFT's), with defaults by model family (`diffrep.core.blocks` for
  the block; `default_t`; `default_scales`), or DIFT's published settings by name (`reference.py`).
- `pixel_describer()`, `daisy_describer()`: the classical baselines, through the same matcher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core import Featurizer, load_backbone
from ...data import match_channels
from ...errors import DiffrepError
from ...features import Cell, Daisy, DiffusionFeatures, RawPixels
from .reference import REFERENCES, Reference, reference as reference_of


def category_prompt(category: str | None) -> str:
    """DIFT's prompt: "a photo of a {category}" when the category is known, else the empty prompt."""
    return f"a photo of a {category}" if category else ""


def concat_maps(maps: list[torch.Tensor]) -> torch.Tensor:
    """Several maps as one descriptor: each L2-normalised over channels (so every one weighs the same
    in the cosine), bilinearly resized to the finest map, concatenated. One map passes unchanged."""
    if len(maps) == 1:
        return maps[0]
    hw = max(tuple(m.shape[-2:]) for m in maps)
    return torch.cat([F.interpolate(F.normalize(m, dim=0)[None], size=hw, mode="bilinear", align_corners=False)[0]
                      for m in maps])


class Describer:
    """Descriptor maps from `source` (see the module). `keys` maps each part of a descriptor to the
    source's key; `stride`: image sides must be a multiple of it; `fixed_size`: the one size the source
    takes (DiT), else None; `channels`: what images are converted to (None: as they are)."""

    def __init__(self, source, keys: dict, descriptors: list[str], stride: int = 1, fixed_size: int | None = None,
                 scales: tuple = (1.0,), batch_size: int = 8, channels: int | None = None, conditional: bool = False):
        self.source, self.keys, self.blocks = source, keys, descriptors
        self.stride, self.fixed_size, self.scales = stride, fixed_size, tuple(scales)
        self.batch_size, self.channels, self.conditional = batch_size, channels, conditional

    def cell(self, descriptor: str) -> float:
        """Image pixels per cell of a descriptor's map: 1 for per-pixel sources (raw pixels, DAISY), less
        when an image scale above 1 is joined (scales are joined on the finest grid)."""
        return 1 / max(self.scales)

    def describe(self, images: list[torch.Tensor], prompt: str | None = None) -> list[dict[str, torch.Tensor]]:
        per_scale = [self._describe_at([self._rescale(im, sc) for im in images], prompt) for sc in self.scales]
        return [{d: concat_maps([ps[i][d] for ps in per_scale]) for d in self.blocks} for i in range(len(images))]

    def _rescale(self, image: torch.Tensor, scale: float) -> torch.Tensor:
        """The image resized by `scale`, each side rounded to a multiple of the stride."""
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
                batch = torch.stack([images[i] if self.channels is None else match_channels(images[i], self.channels)
                                     for i in part])
                feats = self.source.maps(batch, prompt=prompt) if self.conditional else self.source.maps(batch)
                for j, i in enumerate(part):
                    out[i] = {d: concat_maps([feats[self.keys[p]][j] for p in d.split("+")]) for d in self.blocks}
        return out


def default_scales(featurizer: Featurizer) -> tuple[float, ...]:
    """Image scales whose features are joined. Pixel UNets: 1, ½, ¼, ⅛ — a small UNet trained on
    small crops sees little context at full size; its features of the shrunken image add it (chosen
    on validation warps, seed 1: PCK@0.1 67.7 at one scale, 86.1 with ¼, 87.2 with ⅛). Latent UNets
    (SD-sized, DIFT's setting) and DiT: the image as it is."""
    pixel_unet = not featurizer.backbone.is_latent and not featurizer.is_dit
    return (1.0, 0.5, 0.25, 0.125) if pixel_unet else (1.0,)


DIFT_ENSEMBLE = 8   # DIFT's noise draws per image in both its settings: the average smooths out the noise's own pattern


class DiffusionDescriber(Describer):
    """Diffusion features of one or more blocks at noise level t, averaged over `ensemble` noise draws.
    The text prompt reaches conditional UNets only (pixel UNets and DiT take none).

    Each setting left None comes from `reference` (a DIFT setting by name, `REFERENCES`: 'dift-sd',
    'dift-adm') when one is named, else from the defaults: the block from `diffrep.core.blocks`, t from
    `default_t` (by model family, never by block), ensemble 8 (DIFT's), scales from `default_scales`.
    A given setting always wins, so `reference='dift-adm', t=50` is DIFT's ADM setting at t = 50."""

    def __init__(self, featurizer: Featurizer, blocks: list[str] | str | None = None, t=None,
                 ensemble: int | None = None, seed: int = 0, precision: str = "fp32", batch_size: int = 8,
                 scales: tuple | list | None = None, reference: str | None = None):
        backbone = featurizer.backbone
        self.reference, self.reference_name = reference_of(reference), reference
        if self.reference is not None and backbone.noise.kind != "vp":
            raise DiffrepError(f"reference {reference} gives DDPM timesteps; this model's noise levels are EDM σ")
        blocks = _setting(blocks, self.reference, "block", featurizer.default_blocks("match"))
        blocks = [blocks] if isinstance(blocks, str) else list(blocks)
        descriptors = ["+".join(featurizer.check_blocks(d.split("+"))) for d in blocks]
        taps = featurizer.check_blocks([part for d in descriptors for part in d.split("+")])
        self.t = backbone.noise.check(_setting(t, self.reference, "t", default_t(featurizer)))
        ensemble = _setting(ensemble, self.reference, "ensemble", DIFT_ENSEMBLE)
        if ensemble < 1:
            raise DiffrepError(f"ensemble must be ≥ 1, got {ensemble}")
        # every image gets the same noise (one draw per ensemble member), as DIFT does, whatever the batch
        source = DiffusionFeatures(featurizer, taps, [self.t], ensemble, seed, shared_noise=True, precision=precision)
        scales = tuple(_setting(scales or None, self.reference, "scales", default_scales(featurizer)))
        # DiT takes its own size only; UNets run on any multiple of the total stride (what check_images demands)
        fixed_size = backbone.image_size if featurizer.is_dit else None
        if any(not 0 < sc <= 4 for sc in scales) or (fixed_size and scales != (1.0,)):
            raise DiffrepError(f"scales must lie in (0, 4] (and be 1 for DiT, which takes one size); got {scales}")
        super().__init__(source, {b: Cell(self.t, b) for b in taps}, descriptors,
                         stride=max(b.stride for b in featurizer.feature_info()), fixed_size=fixed_size, scales=scales,
                         batch_size=batch_size, channels=backbone.image_channels,
                         conditional=type(backbone.denoiser).__name__ == "UNet2DConditionModel")
        self.featurizer, self.taps, self.ensemble, self.seed, self.precision = featurizer, taps, ensemble, seed, precision

    def cell(self, descriptor: str) -> float:
        """Image pixels per cell of the descriptor's map: its finest part's stride (a join is resized to
        its finest map), over the largest image scale."""
        strides = {b.name: b.stride for b in self.featurizer.feature_info()}
        return min(strides[part] for part in descriptor.split("+")) / max(self.scales)

    def settings(self) -> dict:
        """What every results JSON records of this descriptor besides its blocks: the noise level, the
        ensemble and scales actually used, the seed, and the reference with its own values (or None)."""
        ref = self.reference and {"name": self.reference_name, **self.reference.to_json()}
        return {"t": self.t, "ensemble": self.ensemble, "scales": list(self.scales), "seed": self.seed,
                "reference": ref}


def _setting(given, ref: Reference | None, field: str, default):
    """The given value, else the reference's, else the default: a flag overrides a reference."""
    if given is not None:
        return given
    return getattr(ref, field) if ref is not None else default


def default_t(featurizer: Featurizer) -> int | float:
    """The noise level when none is given: one per model family, whatever the block, so a block or an
    'a+b' join chosen by hand is compared at the same t as the default block.

    - Latent VP denoisers (Stable Diffusion's family, and DiT on the same latents): DIFT's t = 261,
      its setting for Stable Diffusion (`REFERENCES['dift-sd']`).
    - Every other model (pixel UNets; EDM models): the lightest noise (t = 0; σ_min for EDM), best on
      validation warps with photos-ddpm, as DIFT finds light noise best for geometric matching. DIFT's
      own ADM setting (t = 101 at `output_blocks.4`) is `reference='dift-adm'` (`--reference dift-adm`):
      a default for a pixel UNet cannot tell ADM-256 from the small bundled models.
    """
    noise = featurizer.backbone.noise
    if featurizer.backbone.is_latent and noise.kind == "vp":
        return min(REFERENCES["dift-sd"].t, noise.num_steps - 1)
    return noise.lightest


def load_featurizer(model: str, device: str = "auto", precision: str = "fp32", **model_options) -> Featurizer:
    """The featurizer of `model`; `model_options`: `load_backbone`'s preset, flags and class_label."""
    return Featurizer(load_backbone(model, device, precision, **model_options))


def pixel_describer(radius: int = 4) -> Describer:
    """Raw pixels of a (2r+1)² patch around each pixel, minus the patch mean: cosine = NCC."""
    name = f"pixels{2 * radius + 1}x{2 * radius + 1}"
    return Describer(RawPixels(radius, centred=True, position=False, name=name), {name: name}, [name])


def daisy_describer(radius: int = 15) -> Describer:
    """scikit-image's DAISY on the grey image at every pixel."""
    return Describer(Daisy(radius), {"daisy": "daisy"}, ["daisy"])
