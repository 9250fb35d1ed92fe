"""Default blocks: which blocks each use taps when the user names none, one rule per backbone class,
all in this one place.

Uses: 'probe' (the t × block sweeps of classification and correspondence: every block worth a
probe), 'segment' (DDPM-Seg's pixel features), 'segment-candidates' (what `segment train --select`
tries), 'match' (DIFT's one block) and 'fusion' (`diffrep classify`: its single-map heads read the
first, DifFormer's fusion all: the bottleneck and the first two decoder blocks of a UNet, as
DifFormer fuses the middle block with two decoder blocks; for DiT the middle and three-quarter blocks).

- UNets (pixel and latent): probe every top-level block but the output layer (its 'feature' is the
  noise prediction). DDPM-Seg taps the decoder: the mid block and every up block but the last (which
  sits next to the noise prediction); --select also tries the last. DIFT taps Stable Diffusion's
  `up_blocks.1` (the second of four decoder blocks, 1/16 of the image) in latent UNets with four or
  more levels; in the small pixel UNets here the decoder blocks sit at 1/2 to 1/1 of the image where
  at small t the features mostly predict the added noise, and the validation warps put `mid_block`
  first, so pixel UNets match with `mid_block`.
- DiT: every transformer block for the probes and for segmentation (there is no decoder); the middle
  transformer block for matching.
"""

from __future__ import annotations

from ..errors import DiffrepError

USES = ("probe", "segment", "segment-candidates", "match", "fusion")
OUTPUT_LAYERS = ("conv_out", "pos_embed")


def _unet(names: list[str], use: str, latent: bool) -> list[str]:
    ups = [n for n in names if n.startswith("up_blocks.")]
    mid = ["mid_block"] if "mid_block" in names else []
    if use == "probe" or not ups:
        return [n for n in names if n not in OUTPUT_LAYERS]
    if use == "segment":
        return mid + (ups[:-1] or ups)
    if use == "segment-candidates":
        return mid + ups
    if use == "fusion":
        return mid + ups[:2]
    return ["up_blocks.1"] if latent and len(ups) >= 4 else mid or ups[:1]


def _dit(names: list[str], use: str) -> list[str]:
    blocks = [n for n in names if n.startswith("transformer_blocks.")]
    if use == "match":
        return [blocks[len(blocks) // 2]]
    if use == "fusion":
        return [blocks[len(blocks) // 2], blocks[3 * len(blocks) // 4]] if len(blocks) > 1 else blocks
    return [n for n in names if n not in OUTPUT_LAYERS]


def default_blocks(featurizer, use: str) -> list[str]:
    """The blocks `use` taps on this featurizer's backbone when none are given."""
    if use not in USES:
        raise ValueError(f"unknown use {use!r}; one of {USES}")
    names = featurizer.block_names(top_level_only=True)
    blocks = _dit(names, use) if featurizer.is_dit else _unet(names, use, featurizer.backbone.is_latent)
    if not blocks:
        raise DiffrepError(f"no default block for this model; pick from {', '.join(names)}")
    return blocks
