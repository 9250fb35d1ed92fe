"""Describers: dense descriptor maps of images of any size, from any feature source.

`Describer(source, …).describe(images, prompt)` → one {descriptor: C×h×w} per image. A descriptor is
one of the source's maps or several joined by '+' (`mid_block+up_blocks.0`): their maps are
L2-normalised and concatenated (`concat_maps`). Images of the same size run as one batch; with
several image scales the image is also described shrunk (or grown) and the scales are joined the
same way, on the finest grid.

- `DiffusionDescriber`: DIFT's descriptor, diffusion features of blocks at a noise level averaged
  over a noise ensemble (8 draws, DIFT's), with defaults by model family (`diffrep.core.blocks` for
  the block; `default_t`; `default_scales`), or DIFT's published settings by name (`reference.py`).
- `pixel_describer()`, `daisy_describer()`: the classical baselines, through the same matcher.

Hyper-features: a descriptor may join noise levels as well as blocks. Its parts are (block, t) maps:
- `t=[0, 50]` reads every block of every descriptor at every level: 'a+b' is then a@0, a@50, b@0, b@50;
- '@' names a block's own levels, binding to the block before it: 'mid_block@50+up_blocks.0@0' (the
  semantic block under more noise, the fine one under less), 'a@0,50+b@0'; a block without '@' is
  read at the describer's levels.
Decisions: every part weighs the same (each L2-normalised over channels, as blocks already were; a
weight per part would be one more thing to fit on validation, and the sweep's joins are the place to
compare joins). Parts are joined in a fixed order, blocks in execution order and each block's levels
ascending, so one join spelt two ways is one descriptor; its name is that canonical spelling, without
levels when none were named with '@' (they are the describer's `t`, recorded beside it). A (block, t)
part named twice is refused, not merged: it would weigh double. One forward per level reads every
block at that level; a level's noise depends on (seed, image, draw, t) alone, so a join equals the
same parts described one level at a time and joined by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core import Featurizer, load_backbone
from ...data import match_channels
from ...errors import DiffrepError
from ...features import Cell, Daisy, DiffusionFeatures, RawPixels
from ...options import noise_level
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
    """Descriptor maps from `source` (see the module). `parts` maps each descriptor to the source keys
    of its parts, joined in that order; `stride`: image sides must be a multiple of it; `fixed_size`:
    the one size the source takes (DiT), else None; `channels`: what images are converted to (None: as
    they are)."""

    def __init__(self, source, parts: dict[str, list], stride: int = 1, fixed_size: int | None = None,
                 scales: tuple = (1.0,), batch_size: int = 8, channels: int | None = None, conditional: bool = False):
        self.source, self.parts, self.blocks = source, parts, list(parts)
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
                    out[i] = {d: concat_maps([feats[key][j] for key in self.parts[d]]) for d in self.blocks}
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
    """Diffusion features of one or more blocks at one or more noise levels t, averaged over `ensemble`
    noise draws; a descriptor joins blocks and levels (see the module). The text prompt reaches
    conditional UNets only (pixel UNets and DiT take none).

    Each setting left None comes from `reference` (a DIFT setting by name, `REFERENCES`: 'dift-sd',
    'dift-adm') when one is named, else from the defaults: the block from `diffrep.core.blocks`, t from
    `default_t` (by model family, never by block), ensemble 8 (DIFT's), scales from `default_scales`.
    A given setting always wins, so `reference='dift-adm', t=50` is DIFT's ADM setting at t = 50.
    `t` is one level or a list of levels; `self.t` is the level read, or the list (ascending) when several
    are read, as the results JSON records it."""

    def __init__(self, featurizer: Featurizer, blocks: list[str] | str | None = None, t=None,
                 ensemble: int | None = None, seed: int = 0, precision: str = "fp32", batch_size: int = 8,
                 scales: tuple | list | None = None, reference: str | None = None):
        backbone = featurizer.backbone
        self.reference, self.reference_name = reference_of(reference), reference
        if self.reference is not None and backbone.noise.kind != "vp":
            raise DiffrepError(f"reference {reference} gives DDPM timesteps; this model's noise levels are EDM σ")
        self.featurizer = featurizer
        blocks = _setting(blocks, self.reference, "block", featurizer.default_blocks("match"))
        levels = check_levels(_setting(t, self.reference, "t", default_t(featurizer)), backbone.noise)
        parts = dict(self._resolve(spec, levels) for spec in ([blocks] if isinstance(blocks, str) else blocks))
        taps = featurizer.check_blocks([c.block for cells in parts.values() for c in cells])
        self.ts = sorted({c.t for cells in parts.values() for c in cells})   # one forward each
        self.t = self.ts[0] if len(self.ts) == 1 else self.ts
        ensemble = _setting(ensemble, self.reference, "ensemble", DIFT_ENSEMBLE)
        if ensemble < 1:
            raise DiffrepError(f"ensemble must be ≥ 1, got {ensemble}")
        # every image gets the same noise (one draw per ensemble member), as DIFT does, whatever the batch
        source = DiffusionFeatures(featurizer, taps, self.ts, ensemble, seed, shared_noise=True, precision=precision)
        scales = tuple(_setting(scales or None, self.reference, "scales", default_scales(featurizer)))
        # DiT takes its own size only; UNets run on any multiple of the total stride (what check_images demands)
        fixed_size = backbone.image_size if featurizer.is_dit else None
        if any(not 0 < sc <= 4 for sc in scales) or (fixed_size and scales != (1.0,)):
            raise DiffrepError(f"scales must lie in (0, 4] (and be 1 for DiT, which takes one size); got {scales}")
        super().__init__(source, parts, stride=max(b.stride for b in featurizer.feature_info()), fixed_size=fixed_size,
                         scales=scales, batch_size=batch_size, channels=backbone.image_channels,
                         conditional=type(backbone.denoiser).__name__ == "UNet2DConditionModel")
        self.taps, self.ensemble, self.seed, self.precision = taps, ensemble, seed, precision

    def _resolve(self, spec: str, levels: list) -> tuple[str, list[Cell]]:
        """A descriptor's canonical name and its (t, block) parts in join order (see the module)."""
        noise, cells, named = self.featurizer.backbone.noise, [], False
        for block, own in parse_descriptor(spec):
            (block,) = self.featurizer.check_blocks([block])
            try:
                cells += [Cell(t, block) for t in (levels if own is None else check_levels(own, noise))]
            except DiffrepError as err:   # a level off the schedule: say which descriptor holds it
                raise DiffrepError(f"descriptor {spec!r}: {err}") from None
            named = named or own is not None
        twice = _first_repeat(cells)
        if twice is not None:
            raise DiffrepError(f"descriptor {spec!r} names {twice.block} at t={twice.t} twice: a part named twice "
                               "would weigh double; name each (block, t) once")
        order = {n: i for i, n in enumerate(self.featurizer.block_names())}
        cells.sort(key=lambda c: (order[c.block], c.t))
        by_block: dict[str, list] = {}
        for c in cells:
            by_block.setdefault(c.block, []).append(c.t)
        name = "+".join(f"{b}@{','.join(map(str, ts))}" if named else b for b, ts in by_block.items())
        return name, cells

    def cell(self, descriptor: str) -> float:
        """Image pixels per cell of the descriptor's map: its finest part's stride (a join is resized to
        its finest map), over the largest image scale."""
        strides = {b.name: b.stride for b in self.featurizer.feature_info()}
        return min(strides[c.block] for c in self.parts[descriptor]) / max(self.scales)

    def settings(self) -> dict:
        """What every results JSON records of this descriptor besides its blocks: the noise level(s) read
        (a list when several), the ensemble and scales actually used, the seed, and the reference with its
        own values (or None)."""
        ref = self.reference and {"name": self.reference_name, **self.reference.to_json()}
        return {"t": self.t, "ensemble": self.ensemble, "scales": list(self.scales), "seed": self.seed,
                "reference": ref}


def parse_descriptor(spec: str) -> list[tuple[str, list | None]]:
    """A descriptor's parts as written: 'a@0,50+b' → [('a', [0, 50]), ('b', None)] ('@' binds to the
    block before it; None: the describer's levels). Names and levels are checked against the model later."""
    if not isinstance(spec, str):
        raise DiffrepError(f"a descriptor is a block name or a join like 'a+b' or 'a@0,50+b@10', got {spec!r}")
    parts = []
    for part in spec.split("+"):
        block, at, levels = (p.strip() for p in part.partition("@"))
        items = [v.strip() for v in levels.split(",")] if at else []
        if not block or any(not v for v in items):
            raise DiffrepError(f"descriptor {spec!r} has an empty part: join blocks as 'a+b', each optionally at "
                               "its own noise levels ('a@0,50+b@10')")
        parts.append((block, [_level(v, spec) for v in items] if at else None))
    return parts


def _level(text: str, spec: str):
    try:
        return noise_level(text)
    except ValueError:
        raise DiffrepError(f"descriptor {spec!r}: noise level {text!r} is not a number") from None


def check_levels(t, noise) -> list:
    """Noise levels (one or a list) on the model's schedule, each once, ascending."""
    levels = [noise.check(v) for v in (t if isinstance(t, (list, tuple)) else [t])]
    if not levels:
        raise DiffrepError("no noise levels given: give one (--t 0) or several (--t 0,50)")
    twice = _first_repeat(levels)
    if twice is not None:
        raise DiffrepError(f"noise level t={twice} given twice: give each level once")
    return sorted(levels)


def _first_repeat(items: list):
    """The first item that equals an earlier one, or None."""
    return next((v for i, v in enumerate(items) if v in items[:i]), None)


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
    return Describer(RawPixels(radius, centred=True, position=False, name=name), {name: [name]})


def daisy_describer(radius: int = 15) -> Describer:
    """scikit-image's DAISY on the grey image at every pixel."""
    return Describer(Daisy(radius), {"daisy": ["daisy"]})
