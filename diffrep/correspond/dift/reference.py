"""DIFT's published settings by name: `--reference dift-sd` or `--reference dift-adm` on `diffrep match`,
`match-eval` and `match-sweep` (`reference=` in `DiffusionDescriber` and the configs).

The values come from the DIFT reference repository (Tsingularity/dift): its SPair-71k evaluation
commands in the README and the defaults of its two featurizers, the Stable Diffusion one and the ADM
one (guided-diffusion's 256×256 unconditional model). What each index there means:

- SD: `up_ft_index` indexes diffusers' `unet.up_blocks`; 1 is `up_blocks.1` (1/16 of the image).
- ADM: `up_ft_index` indexes guided-diffusion's `UNetModel.output_blocks` (18 entries on ADM-256,
  three per resolution), not the upsampling levels: the ADM featurizer runs the input blocks, the
  middle block, then the output blocks one by one and returns the output of `output_blocks[4]`, the
  second block at 1/16 of the image (a ResBlock then self-attention; diffrep's
  `up_blocks.1.attentions.1` of the converted model). The name is given in guided-diffusion's terms and
  resolved by `Featurizer.check_blocks`; tests/test_dift_reference.py checks the map against OpenAI's
  network.
- Both average 8 noise draws per image and resize every image to a square first (SD 768², ADM 512²,
  twice ADM's training size), at one scale; SD's prompt is "a photo of a {category}" (diffrep's default
  too), ADM is unconditional.

Given flags (--block, --t, --ensemble, --scales, --size) override a reference's values. `match-sweep`
takes the reference's ensemble, scales and size, and adds its t and block to the default grid (its
--t and --blocks, when given, are the grid).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...errors import DiffrepError


@dataclass(frozen=True)
class Reference:
    """One published setting of DIFT for SPair-71k."""

    block: str              # the tapped module (guided-diffusion's name for ADM)
    t: int                  # timestep of the 1,000-step schedule
    ensemble: int           # noise draws averaged per image
    size: int               # both images resized to size×size before the model
    scales: tuple = (1.0,)  # DIFT describes each image at one scale

    def summary(self) -> str:
        return f"{self.block}, t {self.t}, ensemble {self.ensemble}, {self.size}×{self.size}"

    def to_json(self) -> dict:
        return {**asdict(self), "scales": list(self.scales)}


REFERENCES = {
    "dift-sd": Reference("up_blocks.1", 261, 8, 768),       # Stable Diffusion 2.1
    "dift-adm": Reference("output_blocks.4", 101, 8, 512),  # ADM-256 unconditional
}
"""DIFT's published settings by name (`--reference dift-sd`, `dift-adm`): block, t, ensemble, image size."""


def reference(name: str | None) -> Reference | None:
    """The named reference (None: none)."""
    if name is None:
        return None
    if name not in REFERENCES:
        raise DiffrepError(f"unknown reference {name!r}; one of {', '.join(REFERENCES)}")
    return REFERENCES[name]


def references_help() -> str:
    return "; ".join(f"{name}: {r.summary()}" for name, r in REFERENCES.items())
