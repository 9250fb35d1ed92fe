"""DifFeed's feedback hooks on tiny random UNets of both diffusers classes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel, UNet2DModel

from diffrep import DiffrepError
from diffrep.classify.feedback import Feedback, _BlockShape, _pair, feedback_pairs
from diffrep.core.backbone import run_denoiser

from .conftest import tiny_dit

BOTH = ["plain", "cond"]
MIRROR = {"up_blocks.0": "down_blocks.1", "up_blocks.1": "down_blocks.0"}


def plain_unet() -> UNet2DModel:
    """Two levels; two layers per block so the bottleneck block emits two skips of its output's shape."""
    torch.manual_seed(0)
    model = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=2,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4)
    return model.eval().requires_grad_(False)


def cond_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    model = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                 attention_head_dim=2, norm_num_groups=4)
    return model.eval().requires_grad_(False)


def inputs(model, batch: int = 2):
    """(x, timestep, cond) for `model`: random x at its sample size, t=10, 3 random text tokens."""
    gen = torch.Generator().manual_seed(1)
    side = model.config.sample_size
    x = torch.randn(batch, model.config.in_channels, side, side, generator=gen)
    cond = torch.randn(batch, 3, 8, generator=gen) if isinstance(model, UNet2DConditionModel) else None
    return x, torch.full((batch,), 10), cond


@pytest.fixture(params=BOTH)
def model(request):
    return plain_unet() if request.param == "plain" else cond_unet()


def plain_features(model, x, t, cond, names):
    """A whole ordinary forward, with hooks keeping the first tensor each of `names` outputs."""
    modules, out = dict(model.named_modules()), {}
    def keep(name):
        return lambda _m, _i, output: out.__setitem__(name, output[0] if isinstance(output, tuple) else output)

    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    with torch.no_grad():
        run_denoiser(model, x, t, cond)
    for h in handles:
        h.remove()
    return out


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def zero_adapters(feedback: Feedback) -> None:
    with torch.no_grad():
        for adapter in feedback.adapters.values():
            adapter[0].weight.zero_()


# ----------------------------------------------------------------------------- pairing

def test_pairing_mirrors_working_resolution(model):
    """Working resolutions at 16×16 input: down_blocks.0 and up_blocks.1 at 16, down_blocks.1 and
    up_blocks.0 at 8 (cond model: half of these), so each decoder block feeds its mirror."""
    assert feedback_pairs(model, ["up_blocks.1", "up_blocks.0"]) == MIRROR
    feedback = Feedback(model, list(MIRROR))
    assert feedback.pairs == MIRROR
    channels = model.config.block_out_channels   # down_blocks.i outputs channels[i]; up_blocks.j channels[-1-j]
    assert feedback.adapter("up_blocks.0")[0].weight.shape == (channels[1], channels[1], 1, 1)
    assert feedback.adapter("up_blocks.1")[0].weight.shape == (channels[0], channels[0], 1, 1)
    assert feedback.adapter("up_blocks.1")[1].num_features == channels[0]
    assert feedback.adapter("up_blocks.0")[0].bias is None
    assert hook_count(model) == 0


def test_pairing_of_three_levels_is_derived():
    torch.manual_seed(0)
    model = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8, 12), layers_per_block=1,
                        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, norm_num_groups=4)
    assert feedback_pairs(model, ["up_blocks.2", "up_blocks.0", "up_blocks.1"]) == {
        "up_blocks.0": "down_blocks.2", "up_blocks.1": "down_blocks.1", "up_blocks.2": "down_blocks.0"}
    feedback = Feedback(model, ["up_blocks.1"])
    assert list(feedback.pairs) == ["up_blocks.1"]
    assert feedback.adapter("up_blocks.1")[0].weight.shape == (8, 8, 1, 1)


def test_ties_go_to_the_deepest_encoder_block():
    """diffusers' UNets halve the resolution in every down block but the last, so ties need a UNet
    that keeps it: given such shapes, a decoder block feeds the deepest encoder block at its size."""
    shapes = {"down_blocks.0": _BlockShape(4, (8, 8)), "down_blocks.1": _BlockShape(8, (8, 8)),
              "down_blocks.2": _BlockShape(8, (4, 4)), "up_blocks.0": _BlockShape(8, (4, 4)),
              "up_blocks.1": _BlockShape(8, (8, 8)), "up_blocks.2": _BlockShape(4, (8, 8))}
    assert _pair(shapes, ["up_blocks.1", "up_blocks.2"]) == {"up_blocks.1": "down_blocks.1",
                                                             "up_blocks.2": "down_blocks.1"}


# ----------------------------------------------------------------------------- the two passes

def test_zero_feedback_changes_nothing(model):
    """Zero conv weights: BN (train mode, batch statistics) of an all-zero map is 0, ReLU keeps it 0."""
    feedback = Feedback(model, list(MIRROR)).train()
    zero_adapters(feedback)
    x, t, cond = inputs(model)
    names = ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    fed = feedback.forward_two_passes(model, x, t, names, cond)
    plain = plain_features(model, x, t, cond, names)
    assert set(fed) == set(names)
    for name in names:
        torch.testing.assert_close(fed[name], plain[name], rtol=0, atol=1e-5)


class Received:
    """Test hooks, registered before the feedback's own: each down block's output as it left the
    block (before the injection), and what the next block and the up blocks received (after it)."""

    def __init__(self, model):
        self.raw, self.hidden_in, self.skips_in = {}, {}, {}
        self.handles = [model.conv_in.register_forward_hook(lambda _m, _i, o: self.raw.__setitem__("conv_in", o))]
        blocks = list(model.down_blocks) + [model.mid_block]
        for i, block in enumerate(model.down_blocks):
            self.handles.append(block.register_forward_hook(self._keep(self.raw, i)))
            self.handles.append(blocks[i + 1].register_forward_pre_hook(self._first_input(i), with_kwargs=True))
        for j, block in enumerate(model.up_blocks):
            self.handles.append(block.register_forward_pre_hook(self._skips(j), with_kwargs=True))

    def _keep(self, store, i):
        return lambda _m, _i, output: store.__setitem__(i, output)

    def _first_input(self, i):
        return lambda _m, args, kwargs: self.hidden_in.__setitem__(i, args[0] if args else kwargs["hidden_states"])

    def _skips(self, j):
        return lambda _m, args, kwargs: self.skips_in.__setitem__(
            j, args[1] if len(args) > 1 else kwargs["res_hidden_states_tuple"])

    def skip_stack(self) -> list[torch.Tensor]:
        """Every skip the decoder got, in the order the encoder emitted them (up blocks pop from the end)."""
        return [s for j in reversed(sorted(self.skips_in)) for s in self.skips_in[j]]

    def remove(self):
        for h in self.handles:
            h.remove()


def test_feedback_is_the_resized_adapter_output_added_to_output_and_skips(model):
    feedback = Feedback(model, list(MIRROR)).train()
    x, t, cond = inputs(model)
    decoder_maps = plain_features(model, x, t, cond, list(MIRROR))   # pass 1 is an ordinary forward
    received = Received(model)
    try:
        fed = feedback.forward_two_passes(model, x, t, ["up_blocks.1"], cond)   # the last pass to run wins
    finally:
        received.remove()
    expected_stack = [received.raw["conv_in"]]
    for dec, enc in sorted(MIRROR.items(), key=lambda pair: pair[1]):   # in the encoder's order
        i = int(enc.split(".")[1])
        hidden, skips = received.raw[i]
        with torch.no_grad():
            added = F.interpolate(feedback.adapter(dec)(decoder_maps[dec]), size=hidden.shape[-2:], mode="bilinear",
                                  align_corners=False)
        assert added.abs().max() > 1e-3
        torch.testing.assert_close(received.hidden_in[i], hidden + added, rtol=0, atol=1e-6)
        assert skips[-1] is hidden   # diffusers' contract the hook relies on
        for k, skip in enumerate(skips):
            gets_it = skip.shape == hidden.shape
            assert gets_it or k < len(skips) - 1   # the last skip, the output itself, always gets it
            expected_stack.append(skip + added if gets_it else skip)
    got_stack = received.skip_stack()
    assert len(got_stack) == len(expected_stack)
    for got, want in zip(got_stack, expected_stack):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    plain = plain_features(model, x, t, cond, ["up_blocks.1"])["up_blocks.1"]
    assert (fed["up_blocks.1"] - plain).abs().max() > 1e-3


def test_which_skips_get_the_feedback():
    """Two layers per block in the plain UNet: down_blocks.0 emits two 16×16 resnet skips and its
    8×8 downsampler output (only the last gets it); down_blocks.1 two 8×8 skips (both get it)."""
    model = plain_unet()
    feedback = Feedback(model, list(MIRROR)).train()
    x, t, _ = inputs(model)
    received = Received(model)
    try:
        feedback.forward_two_passes(model, x, t, ["up_blocks.1"])
    finally:
        received.remove()
    stack = received.skip_stack()
    raw = [received.raw["conv_in"], *received.raw[0][1], *received.raw[1][1]]
    changed = [not torch.equal(got, want) for got, want in zip(stack, raw)]
    assert changed == [False, False, False, True, True, True]


def test_gradients_reach_the_adapters_only(model):
    feedback = Feedback(model, list(MIRROR)).train()
    x, t, cond = inputs(model)
    feats = feedback.forward_two_passes(model, x, t, ["up_blocks.1"], cond)
    feats["up_blocks.1"].square().mean().backward()
    for adapter in feedback.adapters.values():
        assert adapter[0].weight.grad is not None and adapter[0].weight.grad.abs().max() > 0
        assert adapter[1].weight.grad is not None
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_passes_stop_after_the_last_needed_block():
    """Feeding back up_blocks.0 and reading mid_block: neither pass may run up_blocks.1 or conv_out."""
    model = plain_unet()
    calls = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, n=n: calls.append(n))
               for n, m in (("up_blocks.1", model.up_blocks[1]), ("conv_out", model.conv_out))]
    feedback = Feedback(model, ["up_blocks.0"])
    calls.clear()   # the probe in the constructor runs the whole network
    x, t, _ = inputs(model)
    out = feedback.forward_two_passes(model, x, t, ["mid_block"])
    for h in handles:
        h.remove()
    assert calls == [] and list(out) == ["mid_block"]


# ----------------------------------------------------------------------------- hooks are removed

def test_no_hooks_left_after_a_run(model):
    feedback = Feedback(model, list(MIRROR))
    x, t, cond = inputs(model)
    feedback.forward_two_passes(model, x, t, ["up_blocks.0", "down_blocks.1"], cond)
    assert hook_count(model) == 0


@pytest.mark.parametrize("failing_call", [1, 2])   # mid_block's first run is in pass 1, its second in pass 2
def test_no_hooks_left_after_an_error(failing_call):
    model = plain_unet()
    feedback = Feedback(model, list(MIRROR))
    calls = []

    def fail(_module, _inputs, _output):
        calls.append(1)
        if len(calls) == failing_call:
            raise RuntimeError("boom")

    handle = model.mid_block.register_forward_hook(fail)
    x, t, _ = inputs(model)
    with pytest.raises(RuntimeError, match="boom"):
        feedback.forward_two_passes(model, x, t, ["up_blocks.1"])
    assert hook_count(model) == 1   # the test's own
    handle.remove()
    assert hook_count(model) == 0


# ----------------------------------------------------------------------------- refusals

def test_dit_is_refused():
    dit = tiny_dit()
    message = "DifFeed needs an encoder-decoder UNet; DiTTransformer2DModel has no encoder/decoder"
    with pytest.raises(DiffrepError, match=message):
        feedback_pairs(dit, ["up_blocks.0"])
    with pytest.raises(DiffrepError, match=message):
        Feedback(dit, ["up_blocks.0"])
    with pytest.raises(DiffrepError, match="Conv2d has no encoder/decoder"):
        feedback_pairs(torch.nn.Conv2d(1, 1, 1), ["up_blocks.0"])


@pytest.mark.parametrize("name", ["up_blocks.7", "down_blocks.0", "mid_block", "up_blocks.0.resnets.0"])
def test_unknown_decoder_block_is_refused(name):
    model = plain_unet()
    with pytest.raises(DiffrepError, match=f"unknown decoder block\\(s\\) {name}; valid decoder blocks: "
                                           "up_blocks.0, up_blocks.1$"):
        feedback_pairs(model, [name])
    with pytest.raises(DiffrepError, match="no decoder blocks given"):
        Feedback(model, [])


def test_unknown_read_block_is_refused():
    model = plain_unet()
    feedback = Feedback(model, ["up_blocks.0"])
    x, t, _ = inputs(model)
    with pytest.raises(DiffrepError, match="unknown read block\\(s\\) up_blocks.9"):
        feedback.forward_two_passes(model, x, t, ["up_blocks.9"])
    assert hook_count(model) == 0
