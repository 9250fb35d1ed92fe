"""The featurizer: taps on named blocks of a diffusers denoiser at noise level t.

Block names are the modules' paths in the diffusers model (`down_blocks.1`, `mid_block`,
`up_blocks.0.resnets.1`, `transformer_blocks.3`). Features are read with forward hooks (no copied
forward pass); once the last requested block (in execution order) has run, a hook raises
`_StopForward` and the rest of the network is skipped.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiTTransformer2DModel

from ..errors import DiffrepError
from .backbone import Backbone, run_denoiser
from .precision import autocast_dtype, autocast_in
from .blocks import default_blocks
from .reference_names import reference_aliases, reference_names

SUB_BLOCKS = ("resnets", "attentions", "downsamplers", "upsamplers")
UNET_TOP = ("conv_in", "down_blocks", "mid_block", "up_blocks", "conv_out")
DIT_TOP = ("pos_embed", "transformer_blocks")


@dataclass(frozen=True)
class BlockInfo:
    """One tappable block, as `Featurizer.feature_info()` lists it before any data is run."""
    name: str       # module path in the diffusers model
    channels: int   # feature channels
    stride: int     # image pixels per feature cell (includes the VAE's downsampling)
    top_level: bool # a direct child block (down_blocks.i, mid_block, …) rather than a sub-module


class _StopForward(Exception):
    """Raised by a hook after the last requested block: ends the forward pass early."""


def _unwrap(output):
    """Hook outputs differ by module: down blocks give (hidden, skips), transformers (tensor,) or an
    output object with `.sample`; the feature is the first tensor."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    return getattr(output, "sample", output)


EVERY_LEVEL = 2 ** 64 - 1   # the level code of noise shared by every t: the bits of a NaN, never a real t or σ


def noise_seed(seed: int, index: int, draw: int, t) -> int:
    """The generator seed of image `index`'s noise draw `draw` at level t: numpy's SeedSequence mixes
    the four numbers (t as an integer timestep, or the bits of a float σ) into one 64-bit seed.
    t None: the seed of a noise that is the same at every level (`EVERY_LEVEL` in place of t)."""
    if t is None:
        t_code = EVERY_LEVEL
    else:
        t_code = int(t) if float(t).is_integer() else int.from_bytes(struct.pack(">d", float(t)), "big")
    words = [seed % 2 ** 64, index, draw, t_code % 2 ** 64]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


def image_noise(seed: int | None, indices, ensemble: int, t, shape) -> torch.Tensor:
    """ensemble×len(indices)×shape standard normal noise, each image's draws from `noise_seed` (on the
    CPU, so the same on every device); t None: the noise every level shares; seed None: fresh noise."""
    if seed is None:
        return torch.randn(ensemble, len(indices), *shape)
    gen = torch.Generator()
    return torch.stack([torch.stack([torch.randn(tuple(shape), generator=gen.manual_seed(noise_seed(seed, i, k, t)))
                                     for i in indices]) for k in range(ensemble)])


def forward_capturing(model, modules: dict, model_in, timestep, cond, injections=(), convert=_unwrap,
                      stop_early: bool = True, inputs_of=()) -> dict:
    """One `run_denoiser` forward with `injections` ((module, forward hook) pairs) installed and a
    hook on each module of `modules` ({name: module}) keeping convert(output) (None: not kept), or,
    for the names in `inputs_of`, its first input; ends after the last of them has run when
    `stop_early`. Every hook is removed on the way out, error or not. The one hook mechanism of the
    featurizer and of DifFeed's two passes."""
    out: dict = {}

    def hook_for(name):
        keep_input = name in inputs_of

        def hook(_module, inputs, output):
            value = convert(inputs[0] if keep_input else output)
            if value is not None:
                out[name] = value
            if stop_early and len(out) == len(modules):
                raise _StopForward
        return hook

    with contextlib.ExitStack() as stack:
        for module, hook in injections:
            stack.callback(module.register_forward_hook(hook).remove)
        for name, module in modules.items():
            stack.callback(module.register_forward_hook(hook_for(name)).remove)
        try:
            run_denoiser(model, model_in, timestep, cond)
        except _StopForward:
            pass
    return out


class Featurizer:
    """Features from a backbone at (t, blocks): `extract(images, t, blocks)` -> {name: N×C×h×w}."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.model = backbone.denoiser
        self.is_dit = isinstance(self.model, DiTTransformer2DModel)
        self._info: list[BlockInfo] | None = None
        self._references: dict[str, tuple[str, int]] | None = None

    # ------------------------------------------------------------------ block catalogue
    def _candidates(self) -> dict[str, torch.nn.Module]:
        """Top-level blocks and their resnets/attentions/samplers, by module path."""
        found = {}
        for top in DIT_TOP if self.is_dit else UNET_TOP:
            module = getattr(self.model, top, None)
            if module is None:
                continue
            children = list(module.named_children()) if isinstance(module, torch.nn.ModuleList) else [("", module)]
            for idx, block in children:
                name = f"{top}.{idx}" if idx else top
                found[name] = block
                for sub in SUB_BLOCKS:
                    for j, part in enumerate(getattr(block, sub, None) or []):
                        if part is not None:  # a mid block built with add_attention=False holds None there
                            found[f"{name}.{sub}.{j}"] = part
        return found

    def feature_info(self) -> list[BlockInfo]:
        """Every tappable block, in execution order, with channels and stride. Computed once from one
        dummy forward of the denoiser alone (no VAE) at the smallest input its downsamplings allow: a
        2×2 bottleneck for UNets (an SD-sized UNet then costs milliseconds, not a 768×768 forward);
        DiT at its own size, the only one it takes. The user runs no data."""
        if self._info is None:
            self._info = self.catalogue(self.smallest_side())
        return self._info

    def smallest_side(self) -> int:
        """The side of the smallest denoiser input whose bottleneck is 2×2 (UNets), or DiT's own."""
        config = self.model.config
        own = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        if self.is_dit:
            return own
        return min(own, 2 ** len(config.block_out_channels))   # one 2× downsampling between blocks

    def catalogue(self, side: int) -> list[BlockInfo]:
        """The block catalogue from one forward of a zero side×side denoiser input (latent for latent models)."""
        channels = self.model.config.in_channels
        x = torch.zeros(1, channels, side, side, device=self.backbone.device)
        shapes = self._run(x, self.backbone.noise.lightest, list(self._candidates()), stop_early=False,
                           shapes_only=True)
        image_side = side * self.backbone.vae_factor
        return [BlockInfo(n, s[1], image_side // s[-1], n.count(".") <= 1) for n, s in shapes.items()]

    def block_names(self, top_level_only: bool = False) -> list[str]:
        return [b.name for b in self.feature_info() if b.top_level or not top_level_only]

    def default_blocks(self, use: str = "probe") -> list[str]:
        """The blocks `use` taps when none are named (the rules: `diffrep.core.blocks`)."""
        return default_blocks(self, use)

    def reference_names(self) -> dict[str, tuple[str, int]]:
        """{diffrep block: (guided-diffusion name, diffssl number)} for UNets (`diffrep.core.reference_names`)."""
        if self._references is None:
            self._references = reference_names(self.model)
        return self._references

    def check_blocks(self, blocks: list[str]) -> list[str]:
        """diffrep block names, in execution order without repeats, from diffrep names or the references'
        (guided-diffusion's `output_blocks.6`, diffssl's `24`)."""
        valid = self.block_names()
        aliases = reference_aliases(self.reference_names())
        blocks = [b if b in valid else aliases.get(str(b), b) for b in blocks]
        unknown = [b for b in blocks if b not in valid]
        if unknown:
            shown = f"; or the references' names ({', '.join(list(aliases)[:2])}, …, 1–{len(aliases) // 2})" if aliases else ""
            raise DiffrepError(f"unknown block(s) {', '.join(unknown)}; valid names: {', '.join(valid)}{shown}")
        if not blocks:
            raise DiffrepError("no blocks requested")
        order = {n: i for i, n in enumerate(valid)}
        return sorted(dict.fromkeys(blocks), key=order.__getitem__)

    # ------------------------------------------------------------------ extraction
    def check_images(self, images: torch.Tensor) -> None:
        want_c, size = self.backbone.image_channels, self.backbone.image_size
        if images.ndim != 4 or images.shape[1] != want_c:
            raise DiffrepError(f"the model takes N×{want_c}×H×W images; got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        stride = max(b.stride for b in self.feature_info())
        if self.is_dit and (h, w) != (size, size):
            raise DiffrepError(f"DiT takes {size}×{size} images only; got {h}×{w}: resize them first")
        if h % stride or w % stride:
            raise DiffrepError(f"image size {h}×{w} is not divisible by the model's total stride {stride}; "
                               f"resize to a multiple (e.g. {size}×{size})")

    @torch.no_grad()
    def extract(self, images: torch.Tensor, t, blocks: list[str] | str, ensemble: int = 1, seed: int | None = 0,
                shared_noise: bool = False, bf16: bool = False, prompt: str | None = None,
                stop_early: bool = True, precision: str | None = None,
                indices=None, noise_per_t: bool = True) -> dict[str, torch.Tensor]:
        """Features {block: N×C×h×w float32 on CPU} of `images` (N×C×H×W in [-1, 1]) noised to level t.

        ensemble: k noise draws, run as one batch and averaged.  seed: fixes the draws (None: fresh).
        indices: each image's index in its data set (default 0…N-1): image i's draw k at level t comes
        from (seed, i, k, t) alone, so it is the same whatever the batch it is in, the number of
        processes or a resumption; pass the indices when extracting a data set in pieces.
        shared_noise: one noise tensor for every image (index 0's) instead of one per image.
        noise_per_t: True draws each level's noise from its own seed (image i's draw k at level t from
        (seed, i, k, t)); False gives every level the same noise (from (seed, i, k) alone): with
        shared_noise, DDPM-Seg's one noise tensor for every image and every t. (seed None draws afresh
        on every call, whatever this says.)
        precision: 'fp32', 'bf16' or 'fp16' autocast (fp16: GPUs only); bf16=True is 'bf16'.
        prompt: text condition for conditional UNets (default: empty prompt).
        stop_early: end the forward after the last requested block (False runs the whole network).
        """
        self.check_images(images)
        latents = self.backbone.encode(images.to(self.backbone.device))
        return self.extract_latents(latents, t, blocks, ensemble, seed, shared_noise, bf16, prompt, stop_early, precision,
                                    indices, noise_per_t)

    @torch.no_grad()
    def extract_latents(self, latents: torch.Tensor, t, blocks: list[str] | str, ensemble: int = 1,
                        seed: int | None = 0, shared_noise: bool = False, bf16: bool = False,
                        prompt: str | None = None, stop_early: bool = True,
                        precision: str | None = None, indices=None, noise_per_t: bool = True,
                        as_float: bool = True) -> dict[str, torch.Tensor]:
        """As `extract`, on inputs already passed through `backbone.encode` (reuse them across t).
        as_float False: maps of one draw stay in the dtype they were computed in (bf16 under bf16
        autocast), for a caller that pools them first and converts only the pooled values."""
        blocks = self.check_blocks([blocks] if isinstance(blocks, str) else list(blocks))
        t = self.backbone.noise.check(t)
        if ensemble < 1:
            raise DiffrepError(f"ensemble must be ≥ 1, got {ensemble}")
        n = len(latents)
        indices = [0] if shared_noise else range(n) if indices is None else [int(i) for i in indices]
        if len(indices) != (1 if shared_noise else n):
            raise DiffrepError(f"{len(indices)} indices for {n} images; give one index per image")
        x_t = self.noised(latents, t, seed, indices, ensemble, noise_per_t)
        dtype = autocast_dtype(precision or ("bf16" if bf16 else "fp32"), self.backbone.device)
        with autocast_in(self.backbone.device, dtype):
            feats = self._run(x_t, t, blocks, stop_early=stop_early, prompt=prompt)
        if ensemble == 1:   # the mean of one draw is that draw: skip a copy of every map
            return {name: (f.float() if as_float else f).cpu() for name, f in feats.items()}
        return {name: f.float().view(ensemble, n, *f.shape[1:]).mean(0).cpu() for name, f in feats.items()}

    def _run(self, x_t, t, blocks, stop_early=True, shapes_only=False, prompt=None) -> dict:
        """One denoiser forward with hooks on `blocks`; stops after the last of them when `stop_early`."""
        modules = self._candidates()
        tokens_hw = (x_t.shape[-2] // self.model.config.patch_size,) * 2 if self.is_dit else None

        def as_map(output):
            feat = _unwrap(output)
            if self.is_dit and feat.ndim == 3:  # DiT tokens B×N×D -> B×D×h×w
                feat = feat.transpose(1, 2).reshape(feat.shape[0], feat.shape[2], *tokens_hw)
            if feat.ndim != 4:
                return None
            return tuple(feat.shape) if shapes_only else feat

        return forward_capturing(self.model, {n: modules[n] for n in blocks}, *self.denoiser_inputs(x_t, t, prompt),
                                 convert=as_map, stop_early=stop_early)

    def noised(self, latents: torch.Tensor, t, seed: int | None, indices, ensemble: int = 1,
               noise_per_t: bool = True) -> torch.Tensor:
        """x_t of `latents` (N×…) at level t, image i's draw k from (seed, indices[i], k, t), or from
        (seed, indices[i], k) alone, the same at every t, when not `noise_per_t`: ensemble·N×… (one
        index for all images: the same noise for each)."""
        n = len(latents)
        eps = image_noise(seed, indices, ensemble, t if noise_per_t else None, latents.shape[1:])
        eps = eps.to(latents).expand(ensemble, n, *latents.shape[1:])
        return self.backbone.noise.add_noise(latents.unsqueeze(0), eps, t).reshape(ensemble * n, *latents.shape[1:])

    def denoiser_inputs(self, x_t: torch.Tensor, t, prompt: str | None = None) -> tuple:
        """(model input, timestep, condition): what `run_denoiser` takes for x_t at level t."""
        model_in, timestep = self.backbone.noise.model_input(x_t, t)
        model_in = model_in.to(self.model.dtype)   # weights cast to bf16/fp16 on a GPU take inputs of theirs
        return model_in, timestep, self.backbone.condition(len(x_t), prompt)
