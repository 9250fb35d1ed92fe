"""DIFT's published settings by one switch (`--reference dift-adm`): what it sets on an ADM-256-shaped
UNet (the converter's layout, 1/8 as wide), that given flags override it, that every DIFT command
records it, and, against OpenAI's own network, that its block is what DIFT's ADM code reads
(`up_ft_index` 4: the output of `output_blocks[4]`) at DIFT's noise level."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from diffrep import DiffrepError, Featurizer, load_backbone
from diffrep.cli import main
from diffrep.convert.guided_diffusion import parse_flags, scheduler_for, unet_config
from diffrep.core.featurizer import image_noise
from diffrep.data.photos import photo
from diffrep.correspond.dift import DiffusionDescriber
from diffrep.correspond.dift.evaluate import DescriptorConfig, MatchEvalConfig
from diffrep.correspond.dift.sweep import sweep_axes

# OpenAI's 256x256_diffusion_uncond.pt flags, but 32 channels wide (256 there) with 8-channel heads
ADM_FLAGS = ("--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 "
             "--learn_sigma True --noise_schedule linear --num_channels 32 --num_head_channels 8 --num_res_blocks 2 "
             "--resblock_updown True --use_fp16 False --use_scale_shift_norm True")
DIFT_ADM_BLOCK = "up_blocks.1.attentions.1"   # output_blocks.4 of the converted model


@pytest.fixture(scope="module")
def adm_dir(tmp_path_factory):
    """A pixel DDPM folder with the converter's ADM-256 layout and schedule, random weights."""
    flags = parse_flags(ADM_FLAGS)
    cls, config = unet_config(flags)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("adm")
    cls(**config).save_pretrained(root / "unet")
    scheduler_for(flags).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def adm(adm_dir) -> Featurizer:
    return Featurizer(load_backbone(str(adm_dir)))


def test_dift_adm_sets_block_t_ensemble_scales_and_size(adm):
    describer = DiffusionDescriber(adm, reference="dift-adm")
    assert describer.blocks == [DIFT_ADM_BLOCK] and describer.t == 101 and describer.ensemble == 8
    assert describer.scales == (1.0,)
    # the second of the three output blocks at 1/16 of the image
    assert {b.name: b.stride for b in adm.feature_info()}[DIFT_ADM_BLOCK] == 16
    assert describer.settings()["reference"] == {"name": "dift-adm", "block": "output_blocks.4", "t": 101,
                                                 "ensemble": 8, "size": 512, "scales": [1.0]}
    assert DescriptorConfig(reference="dift-adm").image_size == 512 and DescriptorConfig().image_size is None
    plain = DiffusionDescriber(adm)   # without the switch: the pixel-UNet defaults
    assert (plain.blocks, plain.t, plain.ensemble, plain.scales) == (["mid_block"], 0, 8, (1.0, 0.5, 0.25, 0.125))
    assert plain.settings()["reference"] is None


def test_given_settings_override_the_reference(adm):
    describer = DiffusionDescriber(adm, "mid_block", t=50, ensemble=2, scales=[1, 0.5], reference="dift-adm")
    assert (describer.blocks, describer.t, describer.ensemble, describer.scales) == (["mid_block"], 50, 2, (1, 0.5))
    assert describer.settings()["reference"]["name"] == "dift-adm"
    assert DescriptorConfig(reference="dift-adm", size=64).image_size == 64
    only_t = DiffusionDescriber(adm, t=20, reference="dift-adm")   # the rest still the reference's
    assert (only_t.blocks, only_t.t, only_t.ensemble) == ([DIFT_ADM_BLOCK], 20, 8)


def test_bad_references_are_refused(dit_dir):
    with pytest.raises(DiffrepError, match="--reference must be one of dift-sd, dift-adm"):
        DescriptorConfig(reference="dift-xl")
    with pytest.raises(DiffrepError, match="EDM σ"):
        DiffusionDescriber(Featurizer(load_backbone(str(dit_dir))), reference="dift-adm")


def test_match_and_match_eval_record_the_reference(adm_dir, tmp_path):
    out = tmp_path / "eval"
    assert main(["match-eval", "--model", str(adm_dir), "--reference", "dift-adm", "--ensemble", "1", "--size", "64",
                 "--pairs", "1", "--no-baselines", "--examples", "0", "--out", str(out)]) == 0
    result = json.loads((out / "match-eval.json").read_text())
    assert (result["block"], result["t"], result["ensemble"], result["scales"], result["size"]) == (
        DIFT_ADM_BLOCK, 101, 1, [1.0], 64)
    assert result["reference"]["name"] == "dift-adm" and result["reference"]["ensemble"] == 8
    assert json.loads((out / "config.json").read_text())["reference"] == "dift-adm"

    paths = []
    for i, crop in enumerate((photo("astronaut")[:, 100:140, 150:190], photo("astronaut")[:, 104:140, 155:195])):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(((crop + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()).save(paths[-1])
    assert main(["match", *map(str, paths), "--model", str(adm_dir), "--reference", "dift-adm", "--ensemble", "1",
                 "--size", "64", "--points", "5,5", "--out", str(tmp_path / "m.png")]) == 0
    record = json.loads((tmp_path / "m.json").read_text())
    assert (record["block"], record["t"], record["ensemble"], record["size"]) == (DIFT_ADM_BLOCK, 101, 1, 64)
    assert record["reference"]["name"] == "dift-adm"


def test_match_sweep_grid_holds_the_reference_cell(adm, adm_dir, tmp_path):
    ts, blocks = sweep_axes(MatchEvalConfig(reference="dift-adm"), adm)
    assert ts == [0, 10, 50, 100, 101, 200] and DIFT_ADM_BLOCK in blocks and "mid_block" in blocks
    given = MatchEvalConfig(reference="dift-adm", ts=[10], blocks=["mid_block"])
    assert sweep_axes(given, adm) == ([10], ["mid_block"])
    assert sweep_axes(MatchEvalConfig(), adm)[0] == [0, 10, 50, 100, 200]
    out = tmp_path / "sweep"
    assert main(["match-sweep", "--model", str(adm_dir), "--reference", "dift-adm", "--t", "101", "--blocks",
                 "output_blocks.4", "--ensemble", "1", "--size", "32", "--pairs", "1", "--no-baselines",
                 "--out", str(out)]) == 0
    result = json.loads((out / "match-sweep.json").read_text())
    assert [(c["t"], c["block"]) for c in result["cells"]] == [(101, DIFT_ADM_BLOCK)]
    assert (result["ensemble"], result["scales"], result["size"], result["reference"]["name"]) == (1, [1.0], 32,
                                                                                                    "dift-adm")


def test_dift_adm_reads_what_difts_adm_code_reads_from_openais_network(tmp_path, monkeypatch):
    """DIFT's ADM featurizer runs `output_blocks` one by one and returns h after entry `up_ft_index`
    (4) at t = 101: the output of `output_blocks[4]`. The switch on the converted checkpoint gives
    that map, from the same x_t, which is what OpenAI's diffusion makes of the same noise at t = 101."""
    script_util = pytest.importorskip("guided_diffusion.script_util")
    flags = parse_flags(ADM_FLAGS)
    model, diffusion = script_util.create_model_and_diffusion(
        **{**script_util.model_and_diffusion_defaults(), **{k: v for k, v in vars(flags).items()
                                                             if k in script_util.model_and_diffusion_defaults()}})
    torch.manual_seed(0)
    for p in model.parameters():   # ADM zero-initialises each block's last layer: give every weight a value
        p.data.normal_(0, 0.05)
    torch.save(model.state_dict(), tmp_path / "adm.pt")
    monkeypatch.setenv("DIFFREP_CACHE", str(tmp_path / "cache"))
    featurizer = Featurizer(load_backbone(str(tmp_path / "adm.pt"), flags=ADM_FLAGS))
    describer = DiffusionDescriber(featurizer, reference="dift-adm", ensemble=1)
    image = torch.rand(3, 64, 64) * 2 - 1
    ours = describer.describe([image])[0][DIFT_ADM_BLOCK]

    x_t = featurizer.noised(image[None], 101, 0, [0], 1)
    eps = image_noise(0, [0], 1, 101, image.shape)[0]
    torch.testing.assert_close(x_t, diffusion.q_sample(image[None], torch.tensor([101]), noise=eps).float())
    kept = {}
    model.output_blocks[4].register_forward_hook(lambda _m, _i, out: kept.setdefault("h", out))
    with torch.no_grad():
        model.eval()(x_t, torch.tensor([101]))
    assert ours.shape == kept["h"][0].shape == (128, 4, 4)
    torch.testing.assert_close(ours, kept["h"][0], atol=1e-4, rtol=1e-4)
