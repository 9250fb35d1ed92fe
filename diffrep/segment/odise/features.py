"""ODISE's features: the frozen text-to-image UNet's decoder maps at four strides, one forward at t = 0
with one fixed noise, conditioned on the empty prompt, an implicit caption, or the true caption.

    images ─► (pass 1, empty prompt, stops after mid_block) ─► pooled mid-block map ─► ImplicitCaptioner
           ─► cond = empty-prompt states + tanh(α)·(linear(image embedding) + positional embedding)
           ─► (pass 2, cond) ─► outputs of mid_block, up_blocks.0 … (the inputs of the next decoder blocks)

Decisions:
- The implicit captioner's image embedding comes from the same diffusion model's first pass (its
  mid-block map, averaged over space): no pre-trained image encoder (CLIP) can be loaded offline here,
  and the UNet's bottleneck is the most semantic map it has. As in ODISE the embedding conditions
  both the text tokens and the time embedding, each through its own zero-initialised tanh gate, so
  training starts from the empty prompt exactly. The time embedding is reached by a forward hook on
  the UNet's `time_embedding` module for the second pass only (no copied forward).
- Gradients reach the captioner through the frozen UNet (its weights never change), as in ODISE.
- The taps (`taps`), two layouts:
  `skip-inputs` (ODISE's): the input of the last ResNet of each of the four finest decoder levels,
  which is the decoder's state there concatenated with the encoder's skip connection (for a 4-level
  UNet `up_blocks.{0,1,2,3}.resnets.-1` at strides 8, 4, 2, 1). ODISE reads the inputs of Stable
  Diffusion's output blocks 2, 5, 8 and 11 after this concatenation, so its finest map carries the
  encoder's first, nearly pixel-level, features.
  `block-outputs`: for each of the four finest strides, the last top-level decoder-side block at it
  (mid_block, up_blocks.0, up_blocks.1, up_blocks.3): the input of the next decoder block without
  the skip, or the decoder's final map, which at t = 0 is almost all ε-prediction.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers import UNet2DConditionModel

from ...core.featurizer import BlockInfo, Featurizer, _unwrap, forward_capturing
from ...errors import DiffrepError

CONDITIONINGS = ("implicit", "empty", "caption")   # implicit captioner, empty prompt, the true caption (oracle)
TAPS = ("skip-inputs", "block-outputs")


def pyramid_taps(featurizer: Featurizer, taps: str = "skip-inputs") -> list:
    """Four decoder-side maps, one per stride, finest first (BlockInfo of each; for `skip-inputs` the
    channels are the last ResNet's input channels, decoder state + skip)."""
    if taps not in TAPS:
        raise DiffrepError(f"unknown taps {taps!r}; use one of {', '.join(TAPS)}")
    info = {b.name: b for b in featurizer.feature_info()}
    if taps == "skip-inputs":
        modules = featurizer._candidates()
        levels = [n for n in info if n.startswith("up_blocks.") and n.count(".") == 1]
        by_stride = {}
        for level in levels:                   # execution order: the finer of two levels at one stride wins
            last = max((n for n in info if n.startswith(level + ".resnets.")), key=lambda n: int(n.split(".")[-1]))
            by_stride[info[last].stride] = BlockInfo(last, modules[last].in_channels, info[last].stride, False)
    else:
        decoder = [n for n, b in info.items() if b.top_level and (n == "mid_block" or n.startswith("up_blocks."))]
        by_stride = {info[n].stride: info[n] for n in decoder}   # the latest block of each stride wins
    if len(by_stride) < 4:
        raise DiffrepError(f"ODISE reads four strides of the decoder; {featurizer.backbone.source} gives "
                           f"{sorted(by_stride)} (a UNet with at least four levels is needed)")
    return [by_stride[s] for s in sorted(by_stride)[:4]]


class ImplicitCaptioner(nn.Module):
    """An image embedding → conditioning tokens, gated onto the empty prompt's: at α = 0 the UNet sees
    exactly the empty prompt."""

    def __init__(self, image_dim: int, empty: torch.Tensor, time_dim: int):
        super().__init__()
        tokens, width = empty.shape[-2:]
        self.register_buffer("empty", empty.detach().reshape(1, tokens, width).clone())
        self.proj = nn.Linear(image_dim, width)
        self.position = nn.Parameter(torch.randn(tokens, width) * 0.02)
        self.gate = nn.Parameter(torch.zeros(()))
        self.time_proj = nn.Linear(image_dim, time_dim)
        self.time_gate = nn.Parameter(torch.zeros(()))

    def forward(self, image_embedding: torch.Tensor) -> torch.Tensor:
        prefix = self.proj(image_embedding).unsqueeze(1) + self.position
        return self.empty + torch.tanh(self.gate) * prefix

    def time_offset(self, image_embedding: torch.Tensor) -> torch.Tensor:
        """What is added to the UNet's time embedding (B×time_dim): zero while the gate is closed."""
        return torch.tanh(self.time_gate) * self.time_proj(image_embedding)


class DiffusionPyramid(nn.Module):
    """Images → four maps (finest first) of a frozen text-conditional UNet; `captioner` (trainable)
    when conditioning is 'implicit'."""

    def __init__(self, featurizer: Featurizer, conditioning: str = "implicit", t: int = 0, seed: int = 0,
                 taps: str = "skip-inputs"):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise DiffrepError(f"unknown conditioning {conditioning!r}; use one of {', '.join(CONDITIONINGS)}")
        if conditioning != "empty" and not isinstance(featurizer.model, UNet2DConditionModel):
            raise DiffrepError(f"conditioning {conditioning!r} needs a text-conditional UNet (UNet2DConditionModel); "
                               f"{featurizer.backbone.source} holds a {type(featurizer.model).__name__}: use "
                               "--conditioning empty")
        self.featurizer, self.conditioning, self.seed = featurizer, conditioning, seed
        self.t = featurizer.backbone.noise.check(t)
        self.taps = pyramid_taps(featurizer, taps)
        self._inputs_of = {b.name for b in self.taps} if taps == "skip-inputs" else set()
        featurizer.model.requires_grad_(False)
        self.captioner = None
        if conditioning == "implicit":
            mid = next(b for b in featurizer.feature_info() if b.name == "mid_block")
            time_dim = featurizer.model.time_embedding.linear_2.out_features
            self.captioner = ImplicitCaptioner(mid.channels, featurizer.backbone.condition(1, ""), time_dim)

    @property
    def channels(self) -> list[int]:
        return [b.channels for b in self.taps]

    @property
    def strides(self) -> list[int]:
        return [b.stride for b in self.taps]

    def _pass(self, x_t: torch.Tensor, cond, names: list[str]) -> dict:
        model_in, timestep, empty = self.featurizer.denoiser_inputs(x_t, self.t, "")
        modules = dict(self.featurizer._candidates())
        return forward_capturing(self.featurizer.model, {n: modules[n] for n in names}, model_in, timestep,
                                 empty if cond is None else cond, convert=_unwrap, inputs_of=self._inputs_of)

    def forward(self, images: torch.Tensor, captions: list[str] | None = None) -> list[torch.Tensor]:
        backbone = self.featurizer.backbone
        with torch.no_grad():
            latents = backbone.encode(images.to(backbone.device))
            x_t = self.featurizer.noised(latents, self.t, self.seed, [0])   # one fixed noise for every image
        cond, time_offset = None, None
        if self.conditioning == "caption":
            if captions is None or any(not c for c in captions):
                raise DiffrepError("conditioning 'caption' needs a caption for every image")
            cond = torch.cat([backbone.condition(1, c) for c in captions])
        elif self.captioner is not None:
            with torch.no_grad():
                mid = self._pass(x_t, None, ["mid_block"])["mid_block"]
            embedding = mid.float().mean((-1, -2))
            cond, time_offset = self.captioner(embedding), self.captioner.time_offset(embedding)
        hook = None
        if time_offset is not None:   # the time embedding is B×D: the batch was expanded before it
            add = lambda module, args, out: out + time_offset.to(out.dtype)  # noqa: E731
            hook = self.featurizer.model.time_embedding.register_forward_hook(add)
        try:
            maps = self._pass(x_t, cond, [b.name for b in self.taps])
        finally:
            if hook is not None:
                hook.remove()
        return [maps[b.name].float() for b in self.taps]
