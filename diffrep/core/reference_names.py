"""The reference code bases' block names for a UNet, beside diffrep's module paths.

guided-diffusion (and DDPM-Seg, which indexes it) names a UNet's blocks `input_blocks.N`,
`middle_block` and `output_blocks.N`; diffssl (GDC, DifFormer, DifFeed) numbers the same blocks from 1:
`input_blocks` first, then `middle_block`, then `output_blocks` (on ADM-256: 1–18, 19, 20–37). Each of
those blocks ends in one diffusers module whose output is the block's output:
- `input_blocks.0` is `conv_in`; then per level, each ResNet (with its attention layer, if the level
  has one) and the level's downsampler: `down_blocks.l.resnets.j` or `attentions.j`, `downsamplers.0`;
- `middle_block` is `mid_block`;
- per decoder level, each ResNet with its attention layer, the last one with the level's upsampler:
  `up_blocks.L.resnets.i` or `attentions.i`, or `upsamplers.0`.
The mapping follows the diffusers UNet's own layout, so it holds for any UNet2DModel or
UNet2DConditionModel, and for a converted guided-diffusion checkpoint it names exactly the modules the
references hook (checked against OpenAI's network in tests/test_guided_diffusion.py).
"""

from __future__ import annotations

import torch


def _last_parts(block, prefix: str, upsampler: bool) -> list[str]:
    """The module that ends each step of a down or up block (a ResNet, its attention, or the sampler)."""
    attentions = [a for a in (getattr(block, "attentions", None) or [])]
    names = [f"{prefix}.attentions.{j}" if j < len(attentions) and attentions[j] is not None else f"{prefix}.resnets.{j}"
             for j in range(len(block.resnets))]
    sampler = "upsamplers" if upsampler else "downsamplers"
    if getattr(block, sampler, None):
        if upsampler:
            names[-1] = f"{prefix}.upsamplers.0"
        else:
            names.append(f"{prefix}.downsamplers.0")
    return names


def guided_diffusion_names(model: torch.nn.Module) -> dict[str, str]:
    """{guided-diffusion name: diffrep block name} of a UNet, in execution order ({} for other models)."""
    if not all(hasattr(model, part) for part in ("conv_in", "down_blocks", "up_blocks")):
        return {}
    inputs = ["conv_in"]
    for i, block in enumerate(model.down_blocks):
        inputs += _last_parts(block, f"down_blocks.{i}", upsampler=False)
    outputs = []
    for i, block in enumerate(model.up_blocks):
        outputs += _last_parts(block, f"up_blocks.{i}", upsampler=True)
    names = {f"input_blocks.{k}": name for k, name in enumerate(inputs)}
    if getattr(model, "mid_block", None) is not None:
        names["middle_block"] = "mid_block"
    return {**names, **{f"output_blocks.{k}": name for k, name in enumerate(outputs)}}


def reference_names(model: torch.nn.Module) -> dict[str, tuple[str, int]]:
    """{diffrep block: (guided-diffusion name, diffssl number)}: diffssl numbers the blocks from 1 in the
    same order ({} for models that are not UNets)."""
    adm = guided_diffusion_names(model)
    return {name: (ref, number) for number, (ref, name) in enumerate(adm.items(), start=1)}


def reference_aliases(names: dict[str, tuple[str, int]]) -> dict[str, str]:
    """Every name a reference gives a block → diffrep's name, from `reference_names`."""
    return {alias: name for name, (ref, number) in names.items() for alias in (ref, str(number))}
