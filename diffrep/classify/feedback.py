"""DifFeed's feedback: a frozen UNet's decoder features fed back into its encoder in a second pass.

Pass 1 (no grad) runs the denoiser on x_t and keeps the outputs of the chosen decoder blocks
(`up_blocks.j`). Each kept map goes through a trainable adapter, 1×1 conv (no bias) → BatchNorm2d →
ReLU, to the channel count of its paired encoder block (`down_blocks.i`), is resized bilinearly to
that block's output size and added to its output in pass 2 (same x_t, timestep and condition). Pass 2
captures the requested read blocks and stops after the last of them. It is all forward hooks on the
diffusers model (`UNet2DModel`, `UNet2DConditionModel`), no copied forward pass; the UNet stays
frozen, only the adapters (and the caller's head) train, their gradients flowing through pass 2.

Pairing rule. A block's *working resolution* is the spatial size of its first resnet's output: the
size its layers run at, i.e. that of its input, before a down block's downsampler or an up block's
upsampler. Decoder block `up_blocks.j` feeds the encoder block of the same working resolution (the
deepest one if several share it: the most processed features of that scale). The resolutions come
from one probe forward at the smallest input the model takes (a 2×2 bottleneck), so the pairing is
derived from the model, not hard-coded. In diffusers' UNets every down block but the last halves the
resolution, so this is the mirror, one to one: `up_blocks.j` ↔ `down_blocks.(N-1-j)`, with equal
channel counts. Pairing on *output* size instead would fail: each down block ends with its
downsampler and each up block with its upsampler, so no down block outputs the full resolution of
the last two up blocks, and in a two-level UNet no decoder block would find a partner at all. The
price is the resize: a decoder output is 2× (4× at middle levels) its partner's output, which is why
the map is resized, as the reference resizes the output of a decoder block that ends in an upsampler
to its mirrored encoder block. Explicit pairs (`Feedback(model, pairs=…)`) bypass the rule: any decoder
module feeds any encoder module, resized the same way; diffssl's own pairs (38 − b, `classify.reference`)
join each decoder module to the encoder module whose skip it reads, of the same shape on ADM.

Which states get the feedback. A down block returns (hidden, skips, …): hidden goes to the next
block, skips to the decoder, and the last skip is hidden itself. The resized map is added to hidden
and to every skip of exactly hidden's shape: in the UNet the encoder block's output is also its
skip, so the sum must reach the decoder too. For a block with a downsampler that is its last skip
only (its resnets' skips are at twice the size: they are the block's input-resolution states, which
the map is not resized to); for the last down block (no downsampler) it is every skip it emits, all
being states at its output resolution that the decoder reads in place of hidden.

Read blocks are any module paths of the model (`up_blocks.1`, `up_blocks.1.resnets.0`, `mid_block`)
and give the first tensor of their output; a read down block gives its output with the feedback
added (the reading hook runs after the injecting one).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn

from ..core.backbone import run_denoiser
from ..core.featurizer import _unwrap, forward_capturing   # the featurizer's hooks and early stop, shared
from ..errors import DiffrepError

ENCODER, DECODER = "down_blocks", "up_blocks"


@dataclass(frozen=True)
class _BlockShape:
    channels: int              # channels of the block's output (a down block's hidden state)
    working_hw: tuple[int, int]  # spatial size of its first resnet's output, at the probe input


# ----------------------------------------------------------------------------- pairing

def _check_unet(model: nn.Module) -> None:
    if not all(isinstance(getattr(model, part, None), nn.ModuleList) for part in (ENCODER, DECODER)):
        raise DiffrepError(f"DifFeed needs an encoder-decoder UNet; {type(model).__name__} has no encoder/decoder")


def _probe_inputs(model: nn.Module):
    """(x, timestep, cond) of the smallest input the UNet takes: one halving per down block but the
    last leaves a 2×2 bottleneck; zeros, timestep 0, one zero text token for conditional UNets."""
    weight = next(model.parameters())
    side = 2 ** len(model.down_blocks)
    x = torch.zeros(1, model.config.in_channels, side, side, device=weight.device, dtype=weight.dtype)
    timestep = torch.zeros(1, dtype=torch.long, device=weight.device)
    cond = None
    if isinstance(model, UNet2DConditionModel):
        dim = model.config.encoder_hid_dim or model.config.cross_attention_dim
        dim = dim[0] if isinstance(dim, (list, tuple)) else dim
        cond = torch.zeros(1, 1, dim, device=weight.device, dtype=weight.dtype)
    return x, timestep, cond


def _block_shapes(model: nn.Module, names=None) -> dict[str, _BlockShape]:
    """{module path: output channels and working resolution}, from one probe forward: of `names`, or
    of every `down_blocks.i` / `up_blocks.j`."""
    _check_unet(model)
    if names is None:
        blocks = {f"{part}.{i}": block for part in (ENCODER, DECODER) for i, block in enumerate(getattr(model, part))}
    else:
        modules = dict(model.named_modules())
        blocks = {name: modules[name] for name in names}
    outputs, working = {}, {}

    def record(store, name):
        def hook(_module, _inputs, output):
            store[name] = _unwrap(output).shape
        return hook

    with torch.no_grad(), contextlib.ExitStack() as stack:
        for name, block in blocks.items():
            first = block.resnets[0] if getattr(block, "resnets", None) else block
            stack.callback(block.register_forward_hook(record(outputs, name)).remove)
            stack.callback(first.register_forward_hook(record(working, name)).remove)
        try:
            run_denoiser(model, *_probe_inputs(model))
        except Exception as err:   # diffusers raises many types for inputs a model does not take
            raise DiffrepError(f"cannot probe {type(model).__name__}'s block shapes: "
                               f"{type(err).__name__}: {err}") from err
    return {name: _BlockShape(outputs[name][1], tuple(working[name][-2:])) for name in blocks}


def _pair(shapes: dict[str, _BlockShape], decoder_blocks) -> dict[str, str]:
    """{decoder block: encoder block of the same working resolution, the deepest if several}, in
    execution order."""
    decoders = [name for name in shapes if name.startswith(DECODER + ".")]
    encoders = [name for name in shapes if name.startswith(ENCODER + ".")]
    wanted = [decoder_blocks] if isinstance(decoder_blocks, str) else list(decoder_blocks)
    unknown = [name for name in wanted if name not in decoders]
    if unknown or not wanted:
        what = f"unknown decoder block(s) {', '.join(map(str, unknown))}" if unknown else "no decoder blocks given"
        raise DiffrepError(f"{what}; valid decoder blocks: {', '.join(decoders)}")
    pairs = {}
    for name in sorted(set(wanted), key=decoders.index):
        same = [enc for enc in encoders if shapes[enc].working_hw == shapes[name].working_hw]
        if not same:
            raise DiffrepError(f"{name} works at {shapes[name].working_hw} on the probe input and no encoder block "
                               "does: it has no encoder block to feed")
        pairs[name] = same[-1]   # encoders are listed shallow to deep
    return pairs


def _check_pairs(model: nn.Module, pairs: dict[str, str]) -> dict[str, str]:
    """Explicit pairs as given, each a decoder module (under `up_blocks`) and an encoder module
    (`conv_in` or under `down_blocks`): pass 2 must reach the encoder before the decoder maps exist."""
    _check_unet(model)
    modules = dict(model.named_modules())
    wrong = [f"{dec}:{enc}" for dec, enc in pairs.items()
             if dec not in modules or enc not in modules or not dec.startswith(DECODER + ".")
             or not (enc == "conv_in" or enc.startswith(ENCODER + "."))]
    if wrong or not pairs:
        raise DiffrepError(f"feedback pairs {', '.join(wrong) or '(none)'}: each needs a module under {DECODER} and "
                           f"one under {ENCODER} (or conv_in), e.g. up_blocks.1.resnets.1:down_blocks.2.resnets.0")
    return dict(pairs)


def feedback_pairs(model: nn.Module, decoder_blocks: list[str]) -> dict[str, str]:
    """{decoder block (`up_blocks.j`): the encoder block (`down_blocks.i`) it feeds}, by the rule in
    the module docstring, derived from one probe forward of `model`."""
    return _pair(_block_shapes(model), decoder_blocks)


# ----------------------------------------------------------------------------- hooks

def _run_capturing(model, modules: dict[str, nn.Module], names: list[str], x, timestep, cond,
                   injections=()) -> dict[str, torch.Tensor]:
    """{name: first tensor of its output} for `names`, from one forward with `injections` installed
    (`forward_capturing`); a block that did not run is an error."""
    captured = forward_capturing(model, {n: modules[n] for n in names}, x, timestep, cond, injections)
    missing = [name for name in names if name not in captured]
    if missing:
        raise DiffrepError(f"block(s) {', '.join(missing)} did not run in the forward pass; read another block")
    return captured


def _injector(maps: list[torch.Tensor]):
    """A forward hook for a down block: adds the sum of `maps` (B×C×h×w, C the block's channels),
    resized to the block's output, to that output and to every skip of the output's shape."""
    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        size = hidden.shape[-2:]
        added = sum(F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps).to(hidden.dtype)
        fed = hidden + added
        if not isinstance(output, tuple) or len(output) < 2:
            return fed if not isinstance(output, tuple) else (fed,)
        skips = tuple(fed if s is hidden else s + added if s.shape == hidden.shape else s for s in output[1])
        return (fed, skips, *output[2:])   # e.g. a skip-block's skip_sample, untouched
    return hook


# ----------------------------------------------------------------------------- the module

def _adapter(decoder_channels: int, encoder_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(decoder_channels, encoder_channels, 1, bias=False),
                         nn.BatchNorm2d(encoder_channels), nn.ReLU())


def _key(block: str) -> str:
    return block.replace(".", "_")   # ModuleDict keys cannot hold dots


class Feedback(nn.Module):
    """DifFeed's trainable part: an adapter per fed-back decoder block, and the two-pass forward.

    Built from `decoder_blocks` (`up_blocks.j`, paired by the rule above) or from explicit `pairs`
    ({decoder module: encoder module}, any depth, e.g. diffssl's 38 − b: `classify.reference`).
    `pairs`: {decoder block: encoder block it feeds}; `adapters`: {decoder block with '_' for '.':
    Conv2d(C_dec, C_enc, 1, bias=False) → BatchNorm2d(C_enc) → ReLU}. The model is not held (its
    parameters must not join the trainable ones): pass it to each call.
    """

    def __init__(self, model: nn.Module, decoder_blocks: list[str] | None = None, pairs: dict[str, str] | None = None):
        super().__init__()
        if pairs is None:
            shapes = _block_shapes(model)
            self.pairs = _pair(shapes, decoder_blocks)
        else:
            self.pairs = _check_pairs(model, pairs)
            shapes = _block_shapes(model, [*self.pairs, *self.pairs.values()])
        self.adapters = nn.ModuleDict({_key(dec): _adapter(shapes[dec].channels, shapes[enc].channels)
                                       for dec, enc in self.pairs.items()})
        self.to(next(model.parameters()).device)

    def adapter(self, decoder_block: str) -> nn.Sequential:
        return self.adapters[_key(decoder_block)]

    def forward_two_passes(self, model: nn.Module, x: torch.Tensor, timestep, read_blocks: list[str],
                           cond=None) -> dict[str, torch.Tensor]:
        """{read block: its output in pass 2 (B×C×h×w for UNet blocks)} of `model` on x (B×C×H×W, the
        denoiser's input at `timestep`, with `cond` as for `run_denoiser`), its encoder fed this
        module's adapted decoder maps from pass 1. Gradients reach the adapters when grad is on."""
        modules = dict(model.named_modules())
        read_blocks = self._check_blocks(model, modules, read_blocks)
        with torch.no_grad():
            decoder_maps = _run_capturing(model, modules, list(self.pairs), x, timestep, cond)
        injections = [(modules[enc], _injector(maps)) for enc, maps in self._adapted(decoder_maps).items()]
        return _run_capturing(model, modules, read_blocks, x, timestep, cond, injections)

    forward = forward_two_passes   # so that wrappers calling the module itself (DDP, …) work

    def _adapted(self, decoder_maps: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """{encoder block: its adapted decoder maps (B×C_enc×h_dec×w_dec, not yet resized)}."""
        per_encoder: dict[str, list[torch.Tensor]] = {}
        for dec, enc in self.pairs.items():
            adapter = self.adapter(dec)
            features = decoder_maps[dec].to(adapter[0].weight.dtype)   # half-precision weights give half maps
            per_encoder.setdefault(enc, []).append(adapter(features))
        return per_encoder

    def _check_blocks(self, model, modules: dict[str, nn.Module], read_blocks) -> list[str]:
        _check_unet(model)
        absent = [name for pair in self.pairs.items() for name in pair if name not in modules]
        if absent:
            raise DiffrepError(f"this Feedback was built for a UNet with {', '.join(absent)}; "
                               f"{type(model).__name__} given has none")
        wanted = [read_blocks] if isinstance(read_blocks, str) else list(dict.fromkeys(read_blocks))
        unknown = [name for name in wanted if name not in modules or not name]
        if unknown or not wanted:
            what = f"unknown read block(s) {', '.join(map(str, unknown))}" if unknown else "no read blocks given"
            raise DiffrepError(f"{what}; use module paths of the model, e.g. down_blocks.0, mid_block, up_blocks.1")
        return wanted
