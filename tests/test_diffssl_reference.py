"""`diffrep classify --reference diffssl` on a UNet2DModel of ADM-256's layout (widths ÷32, 64² inputs):
the switch's cells and pairs, flags over it, and DifFeed's pairing against diffssl's 38 − b."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffrep import DiffrepError
from diffrep.classify import ClassifyConfig
from diffrep.classify.feedback import Feedback, feedback_pairs
from diffrep.classify.gdc import _resolve_reading
from diffrep.classify.reference import DIFFSSL, apply_reference
from diffrep.cli import main
from diffrep.core import Featurizer, load_backbone

from .test_bad_input import run_bad
from .test_feedback import plain_features, zero_adapters

ATTENTION_LEVELS = (3, 4, 5)   # ADM-256 attends at 32, 16 and 8 pixels: the last three of six levels
BLOCK_24 = "up_blocks.1.attentions.1"


def adm_layout_unet() -> UNet2DModel:
    """ADM-256's block structure (OpenAI's 256x256_diffusion_uncond.pt) at 1/32 of its widths."""
    torch.manual_seed(0)
    model = UNet2DModel(sample_size=64, in_channels=3, out_channels=6, block_out_channels=(8, 8, 16, 16, 32, 32),
                        layers_per_block=2, down_block_types=("ResnetDownsampleBlock2D",) * 3 + ("AttnDownBlock2D",) * 3,
                        up_block_types=("AttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",) * 3,
                        downsample_type="resnet", upsample_type="resnet", resnet_time_scale_shift="scale_shift",
                        attention_head_dim=2, norm_num_groups=4, attn_norm_num_groups=4)
    return model.eval().requires_grad_(False)


def diffssl_numbering() -> dict[int, str]:
    """diffssl's block numbers → module paths of the layout: each ADM block is its last module (1 conv_in,
    2–18 the encoder's resnets/attentions and downsamplers, 19 mid_block, 20–37 the decoder's)."""
    names, levels = ["conv_in"], range(6)
    for level in levels:
        part = "attentions" if level in ATTENTION_LEVELS else "resnets"
        names += [f"down_blocks.{level}.{part}.{j}" for j in range(2)]
        names += [f"down_blocks.{level}.downsamplers.0"] if level < 5 else []
    names.append("mid_block")
    for level in levels:
        part = "attentions" if 5 - level in ATTENTION_LEVELS else "resnets"
        names += [f"up_blocks.{level}.{part}.{i}" for i in range(2)]
        names.append(f"up_blocks.{level}.upsamplers.0" if level < 5 else f"up_blocks.{level}.{part}.2")
    return dict(enumerate(names, start=1))


NUMBERS = diffssl_numbering()
NUMBER_OF = {name: n for n, name in NUMBERS.items()}


def level_number(block: str) -> int:
    """diffssl's number of a whole level (`up_blocks.1`): that of its last module, whose output it returns."""
    return max(n for n, name in NUMBERS.items() if name.startswith(block + "."))


@pytest.fixture(scope="module")
def adm_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("adm_layout")
    adm_layout_unet().save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return root


def output_shapes(model, names) -> dict[str, tuple]:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return {n: tuple(v.shape[1:]) for n, v in plain_features(model, x, torch.tensor([150]), None, names).items()}


# ----------------------------------------------------------------------------- the pairing on ADM-256

def test_check_blocks_takes_diffssl_numbers_for_these_modules(adm_dir):
    """The block aliases the switch relies on name the modules this file numbers."""
    featurizer = Featurizer(load_backbone(str(adm_dir)))
    assert [featurizer.check_blocks([str(n)])[0] for n in NUMBERS] == list(NUMBERS.values())


def test_the_numbering_has_diffssl_channels_and_sides():
    """diffssl's table of ADM-256 (channels 256×7, 512×6, 1024×12, 512×6, 256×6; sides 256×3, 128×3, 64×3,
    32×3, 16×3, 8×6, 16×3, …, 256×4) at 1/32 of the widths and 1/4 of the side: block 24 is 1024 at 16²."""
    channels = [256] * 7 + [512] * 6 + [1024] * 12 + [512] * 6 + [256] * 6
    sides = [256] * 3 + [128] * 3 + [64] * 3 + [32] * 3 + [16] * 3 + [8] * 6 + [16] * 3 + [32] * 3 + [64] * 3 + \
        [128] * 3 + [256] * 4
    shapes = output_shapes(adm_layout_unet(), list(NUMBERS.values()))
    assert [shapes[NUMBERS[n]] for n in NUMBERS] == [(c // 32, s // 4, s // 4) for c, s in zip(channels, sides)]
    assert NUMBERS[24] == BLOCK_24 and NUMBERS[19] == "mid_block" and NUMBERS[30] == "up_blocks.3.resnets.1"


def test_diffrep_mirror_pairing_is_not_38_minus_b_on_adm256():
    """diffrep pairs whole levels by working resolution: up_blocks.j (its upsampler's output, block 22 + 3j)
    with down_blocks.(5 − j) (its downsampler's output): 22→18, 25→16, …, 37→4, each one level off
    38 − b (38 − 25 = 13). diffssl's fed-back blocks (21, 24, …, 36) are modules inside the levels,
    which the rule does not take."""
    model = adm_layout_unet()
    mirror = feedback_pairs(model, [f"up_blocks.{j}" for j in range(6)])
    numbered = {level_number(dec): level_number(enc) for dec, enc in mirror.items()}
    assert numbered == {22: 18, 25: 16, 28: 13, 31: 10, 34: 7, 37: 4}
    assert all(enc != 38 - dec for dec, enc in numbered.items())
    with pytest.raises(DiffrepError, match="unknown decoder block"):
        feedback_pairs(model, [BLOCK_24])


def test_diffssl_pairs_join_maps_of_one_shape():
    """38 − b joins each decoder module to the encoder module whose skip it reads: the same shape, so
    the reference's resize is the identity."""
    pairs = [(NUMBERS[int(dec)], NUMBERS[int(enc)]) for dec, enc in DIFFSSL.feedback_pairs]
    shapes = output_shapes(adm_layout_unet(), [name for pair in pairs for name in pair])
    assert [int(dec) for dec, _ in DIFFSSL.feedback_pairs] == [21, 24, 27, 30, 33, 36]
    assert all(shapes[dec] == shapes[enc] for dec, enc in pairs)
    assert pairs[1] == (BLOCK_24, "down_blocks.4.attentions.0")


def test_explicit_pairs_add_each_decoder_map_to_its_encoder_module_and_its_skip():
    model = adm_layout_unet()
    pairs = {NUMBERS[int(dec)]: NUMBERS[int(enc)] for dec, enc in DIFFSSL.feedback_pairs}
    feedback = Feedback(model, pairs=pairs).eval()
    assert feedback.pairs == pairs
    x, t = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.full((2,), 150)
    encoder = "down_blocks.4.attentions.0"
    plain = plain_features(model, x, t, None, [encoder, BLOCK_24])
    with torch.no_grad():   # only block 24 feeds back (a zero conv gives a zero map): its encoder's input is as plain
        for dec in pairs:
            feedback.adapter(dec)[0].weight.mul_(dec == BLOCK_24)
        fed = feedback.forward_two_passes(model, x, t, [encoder, BLOCK_24])
    added = feedback.adapter(BLOCK_24)(plain[BLOCK_24])
    torch.testing.assert_close(fed[encoder], plain[encoder] + added)
    assert not torch.allclose(fed[BLOCK_24], plain[BLOCK_24])   # the decoder reads the fed skip
    zero_adapters(feedback)
    with torch.no_grad():
        torch.testing.assert_close(feedback.forward_two_passes(model, x, t, [BLOCK_24])[BLOCK_24], plain[BLOCK_24])


def test_explicit_pairs_must_run_decoder_to_encoder():
    with pytest.raises(DiffrepError, match="down_blocks.1.resnets.0:up_blocks.1.attentions.1"):
        Feedback(adm_layout_unet(), pairs={"down_blocks.1.resnets.0": BLOCK_24})


# ----------------------------------------------------------------------------- the switch

def resolve(adm_dir, **settings) -> tuple[ClassifyConfig, dict]:
    cfg = ClassifyConfig(model=str(adm_dir), **settings)
    record = apply_reference(cfg)
    _resolve_reading(cfg, Featurizer(load_backbone(cfg.model, "cpu")))
    return cfg, record


def test_the_switch_sets_diffssl_cells_and_pairs(adm_dir):
    cfg, record = resolve(adm_dir, reference="diffssl")
    assert cfg.blocks == ["mid_block", BLOCK_24, "up_blocks.3.resnets.1"] and cfg.ts == [90, 150, 300]
    assert (cfg.head_block, cfg.head_t) == (BLOCK_24, 150)
    assert [(NUMBER_OF[dec], NUMBER_OF[enc]) for dec, enc in cfg.feedback_pairs] == \
        [(21, 17), (24, 14), (27, 11), (30, 8), (33, 5), (36, 2)]
    assert record["given"] == {} and record["set"]["blocks"] == ("19", "24", "30")


def test_flags_given_with_the_switch_win(adm_dir):
    cfg, record = resolve(adm_dir, reference="diffssl", ts=[50], head_block="mid_block",
                          feedback_pairs=[("up_blocks.0", "down_blocks.5")])
    assert cfg.ts == [50] and cfg.head_block == "mid_block" and cfg.feedback_pairs == [["up_blocks.0", "down_blocks.5"]]
    assert cfg.blocks == ["mid_block", BLOCK_24, "up_blocks.3.resnets.1"] and cfg.head_t == 150   # still the reference's
    assert set(record["given"]) == {"ts", "head_block", "feedback_pairs"} and set(record["set"]) == {"blocks", "head_t"}


def test_without_the_switch_nothing_changes(unet_dir):
    cfg, record = resolve(unet_dir)
    assert record is None and cfg.ts == [25, 50, 100] and cfg.feedback_pairs is None
    assert (cfg.head_block, cfg.head_t) == (cfg.blocks[0], 25)


def test_classify_with_the_switch_records_what_it_read(adm_dir, labelled_folder, tmp_path):
    out = tmp_path / "ref"
    assert main(["classify", "--model", str(adm_dir), "--data", str(labelled_folder), "--reference", "diffssl",
                 "--heads", "attention,fusion,feedback", "--epochs", "1", "--width", "8", "--depth", "1",
                 "--train-batch", "16", "--batch-size", "20", "--no-baselines", "--out", str(out)]) == 0
    result = json.loads((out / "classify.json").read_text())
    rows = {r["head"]: r for r in result["heads"]}
    assert [(c["t"], c["block"]) for c in rows["attention"]["cells"]] == [(150, BLOCK_24)]
    assert [(c["t"], NUMBER_OF[c["block"]]) for c in rows["fusion"]["cells"]] == \
        [(t, b) for t in (90, 150, 300) for b in (19, 24, 30)]
    assert rows["feedback"]["cells"] == [{"t": 150, "block": BLOCK_24}]
    assert {NUMBER_OF[d]: NUMBER_OF[e] for d, e in rows["feedback"]["fed_back"].items()} == \
        {b: 38 - b for b in (21, 24, 27, 30, 33, 36)}
    reference = result["reference"]
    assert reference["name"] == "diffssl" and reference["resolved"]["head_block"] == BLOCK_24
    assert "soumik-kanad/diffssl" in reference["source"] and result["head_cell"]["block"] == BLOCK_24


@pytest.mark.parametrize("args, message", [
    (["--reference", "ddpm"], "--reference"),
    (["--reference", "diffssl"], "this model's 19 is no block"),   # not ADM-256's numbering: refused, not misread
    (["--feedback-pairs", "up_blocks.0"], "block pair"),
])
def test_bad_reference_flags_are_refused_in_one_line(unet_dir, labelled_folder, tmp_path, capsys, args, message):
    assert message in run_bad(["classify", "--model", str(unet_dir), "--data", str(labelled_folder), *args,
                               "--out", str(tmp_path / "r")], capsys)
