"""DDPM-Seg's settings, each with its default, range and help stated once (the command line is built
from them)."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import DDPMScheduler

from ...core import RunOn
from ...options import MODEL_HELP, noise_level, option
from .reference import REFERENCE, reference_settings

DDPM_SEG_TS = (50, 150, 250)   # DDPM-Seg's timesteps (of 1000)


@dataclass
class SegConfig(RunOn):
    """The settings of `diffrep segment train` (DDPM-Seg): each field is a flag of the command, with
    the same default and range."""
    model: str = option("scenes-ddpm", MODEL_HELP)
    data: str = option("scenes", "'scenes' (bundled), a folder with images/ + masks/, or DDPM-Seg's layout: a folder "
                                 "of images each beside a same-stem .npy label array, or a data set root with "
                                 "real/train and real/test")
    reference: str | None = option(None, f"DDPM-Seg's settings for one of its data sets ({', '.join(REFERENCE)}): its "
                                         "blocks (as output_blocks.N), t, labelled count, K, batch size, classes and one "
                                         "noise for every image and t; flags given with it override it",
                                   choices=tuple(REFERENCE), parse=str)
    labelled: int | None = option(None, "labelled images to train on, the first N (default: 20 of the bundled scenes; "
                                        "all of a folder's; --reference: its own count)", parse=int, min=1)
    blocks: list | None = option(None, "blocks (default: mid_block + up blocks but the last)", many=True)
    ts: list | None = option(None, "noise levels (default 50,150,250; σ for EDM)", parse=noise_level, many=True,
                             flag="--t")
    k: int = option(10, "MLPs in the ensemble", min=1)
    ensemble: int = option(1, "noise draws averaged per feature (DDPM-Seg: 1)", min=1)
    seed: int = option(0, "seed of the noise and of the heads' initialisation")
    shared_noise: bool = option(True, "give each image a noise of its own (seeded by its index) instead of one noise "
                                      "shared by every image", flag="--fresh-noise")
    noise_per_t: bool = option(True, "use the same noise at every t (DDPM-Seg's reference, with the shared noise: one "
                                     "noise tensor for every image and every t) instead of a separate seeded draw "
                                     "per t", flag="--same-noise-every-t")
    pixels_per_image: int = option(1000, "pixels drawn afresh from each labelled image every epoch", min=1)
    balanced: bool = option(True, "sample pixels uniformly (default: class-balanced)", flag="--uniform")
    pool_mb: float = option(512.0, "cap on the in-RAM pool of sampled pixel features (MB)", above=0)
    batch_size: int = option(64, "pixels per step (DDPM-Seg: 64)", min=1)
    lr: float = option(1e-3, "Adam learning rate", above=0)
    max_epochs: int = option(10, "epochs; each is a fresh draw of pixels", min=1)
    patience: int = option(3, "epochs without a better held-out loss before a head stops", min=1)
    min_class_pixels: int = option(20, "a class with fewer pixels in an image is not trained on there", min=1, cli=False)
    extract_batch: int = option(8, "images per denoiser forward", min=1)
    select: bool = option(False, "choose blocks and t by cross-validation on the labelled images (--blocks/--t: the "
                                 "candidates)")
    select_blocks: int = option(3, "blocks kept by --select", min=1, cli=False)
    select_ts: int = option(2, "noise levels kept by --select", min=1, cli=False)
    baselines: bool = option(True, "skip raw pixels, random weights, single MLP")
    neighbourhood: int = option(2, "raw-pixel baseline: RGB of a (2r+1)² window", min=0, cli=False)
    colour_copies: int = option(0, "add N (≤5) copies of each labelled image with permuted RGB channels, so no colour "
                                   "marks a class", min=0, max=5)
    held_out_images: int = option(0, "stop early on the last N labelled images (not trained on) instead of a tenth "
                                     "of every image's pixels", min=0)
    selection: dict = option({}, cli=False)   # what --select found (written to config.json)


def with_reference(name: str | None, **given) -> SegConfig:
    """A SegConfig from DDPM-Seg's settings for its data set `name` (none: the defaults), the fields in
    `given` overriding them: what `segment train --reference NAME` plus other flags builds."""
    return SegConfig(**{**(reference_settings(name) if name else {}), **given})


def default_levels(noise) -> list:
    """t ∈ {50, 150, 250} for VP models with a 1000-step schedule (scaled for other lengths); for EDM
    models the σ with the same signal-to-noise ratio under DDPM's linear schedule."""
    if noise.kind == "vp":
        return sorted({min(noise.num_steps - 1, round(t * noise.num_steps / 1000)) for t in DDPM_SEG_TS})
    ab = DDPMScheduler().alphas_cumprod
    sigmas = [float(((1 - ab[t]) / ab[t]).sqrt()) for t in DDPM_SEG_TS]
    return [round(min(max(s, noise.sigma_min), noise.sigma_max), 4) for s in sigmas]
