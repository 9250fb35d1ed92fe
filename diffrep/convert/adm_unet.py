"""`ADMUNet2DModel`: diffusers' `UNet2DModel` with the two guided-diffusion settings it cannot state.

Most published ADM models map onto a plain `UNet2DModel` config, and the converter writes one
(loadable by diffusers alone). Two of OpenAI's do not:
- a fixed number of heads per attention layer (`--num_heads 4` without `--num_head_channels`, the
  ImageNet 128 model): the head width then changes from level to level, where `UNet2DModel` has one
  `attention_head_dim` for all;
- a first level narrower than `--num_channels` (`channel_mult` 0.5,…, the ImageNet 512 model): ADM's
  timestep embedding is `num_channels` wide, `UNet2DModel`'s is `block_out_channels[0]` wide.
For these the converter writes this class; `diffrep.core.load_backbone` knows it by name.
"""

from __future__ import annotations

import inspect

from diffusers import UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps


class ADMUNet2DModel(UNet2DModel):
    """A `UNet2DModel` plus `attention_heads` (fixed heads for the encoder and middle attention layers),
    `attention_heads_upsample` (for the decoder's; default: `attention_heads`) and `timestep_channels`
    (the sinusoidal timestep embedding's width; default: `block_out_channels[0]`)."""

    def __init__(self, attention_heads: int | None = None, attention_heads_upsample: int | None = None,
                 timestep_channels: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if timestep_channels is not None:
            config = self.config
            self.time_proj = Timesteps(timestep_channels, config.flip_sin_to_cos, config.freq_shift)
            width = config.time_embedding_dim or config.block_out_channels[0] * 4
            self.time_embedding = TimestepEmbedding(timestep_channels, width)
        if attention_heads is not None:
            for part, heads in ((self.down_blocks, attention_heads), (self.mid_block, attention_heads),
                                (self.up_blocks, attention_heads_upsample or attention_heads)):
                for module in part.modules():
                    if isinstance(module, Attention):
                        _set_heads(module, heads)


def _with_base_signature(init):
    """diffusers reads a model's config keys from its __init__ signature: state UNet2DModel's keyword
    arguments beside the three of this class, so every one is saved and read back."""
    base = list(inspect.signature(UNet2DModel.__init__).parameters.values())
    own = list(inspect.signature(init).parameters.values())
    init.__signature__ = inspect.Signature([base[0], *own[1:-1], *base[1:]])
    return register_to_config(init)


ADMUNet2DModel.__init__ = _with_base_signature(ADMUNet2DModel.__init__)


def _set_heads(attn: Attention, heads: int) -> None:
    """Split an attention layer's width into `heads` heads (diffusers' processors read `attn.heads`;
    the scale 1/√(head width) as ADM's)."""
    width = attn.to_q.out_features
    if width % heads:
        raise ValueError(f"attention width {width} is not divisible by {heads} heads")
    attn.heads = heads
    attn.scale = (width // heads) ** -0.5
