"""guided-diffusion (ADM) checkpoints: converted folders compute what OpenAI's own network computes.

For each configuration family, OpenAI's `guided_diffusion.script_util.create_model` builds the network
with random weights (every tensor redrawn, so the zero-initialised output convolutions and attention
projections take part), its state dict is saved as the references save theirs, converted, and the
converted model's output (ε and σ channels) and the activation of every `input_blocks[i]`,
`middle_block` and `output_blocks[i]` are compared with the diffrep tap of the same name.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from diffrep.cli import main
from diffrep.convert.guided_diffusion import PRESETS, convert, parse_flags
from diffrep.core import Featurizer, load_backbone
from diffrep.core.featurizer import _unwrap, forward_capturing

script_util = pytest.importorskip("guided_diffusion.script_util")

SMALL = dict(image_size=32, num_channels=32, num_res_blocks=2, channel_mult="1,2,2", attention_resolutions="16,8",
             learn_sigma=True, class_cond=False, use_scale_shift_norm=True, resblock_updown=True, num_head_channels=16,
             num_heads=4, num_heads_upsample=-1, use_new_attention_order=False, dropout=0.0)
FAMILIES = {
    "legacy attention, head channels": {},
    "new attention order": dict(use_new_attention_order=True),
    "fixed num_heads (ImageNet 128)": dict(num_head_channels=-1, num_heads=2),
    "fixed num_heads, other upsampling heads": dict(num_head_channels=-1, num_heads=2, num_heads_upsample=4),
    "class-conditional": dict(class_cond=True),
    "learn_sigma off": dict(learn_sigma=False),
    "resblock_updown off": dict(resblock_updown=False),
    "scale-shift norm off": dict(use_scale_shift_norm=False),
    "one head": dict(num_head_channels=-1, num_heads=1),
    "half-width first level (ImageNet 512)": dict(image_size=512, channel_mult="", num_channels=64, num_res_blocks=1,
                                                 num_head_channels=32),
}
TOLERANCE = 1e-5   # relative: max |a − b| / max |a|, fp32


def flags_text(settings: dict) -> str:
    return " ".join(f"--{k} {v}" for k, v in settings.items() if v != "")


def openai_model(settings: dict, seed: int = 0):
    """OpenAI's network with every tensor drawn afresh, at a scale that keeps activations near 1 (weights
    1/√fan-in, so that deep variants do not blow up and fp32 round-off stays comparable)."""
    torch.manual_seed(seed)
    model = script_util.create_model(**settings).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0, p[0].numel() ** -0.5)
            else:
                p.normal_(1.0 if "norm" in name or name.endswith(("layers.0.weight", "out.0.weight")) else 0.0, 0.1)
    return model


def openai_taps(model, x, t, y) -> tuple[torch.Tensor, dict]:
    taps, handles = {}, []
    blocks = {**{f"input_blocks.{i}": m for i, m in enumerate(model.input_blocks)}, "middle_block": model.middle_block,
              **{f"output_blocks.{i}": m for i, m in enumerate(model.output_blocks)}}
    for name, module in blocks.items():
        handles.append(module.register_forward_hook(lambda _m, _i, out, name=name: taps.__setitem__(name, out)))
    with torch.no_grad():
        out = model(x, t, y) if y is not None else model(x, t)
    for h in handles:
        h.remove()
    return out, taps


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def compare(settings: dict, tmp_path, side: int) -> dict[str, float]:
    """Relative error of the output and of every reference block, converted against OpenAI's."""
    model = openai_model(settings)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    folder = convert(tmp_path / "model.pt", tmp_path / "converted", flags=flags_text(settings))
    featurizer = Featurizer(load_backbone(folder))
    x = torch.randn(2, 3, side, side)
    t = torch.tensor([10, 600])
    y = torch.tensor([3, 917]) if settings["class_cond"] else None
    want_out, want_taps = openai_taps(model, x, t, y)
    names = featurizer.check_blocks(list(want_taps))
    assert len(names) == len(want_taps)   # each reference block is its own diffrep tap
    modules = featurizer._candidates()
    got = forward_capturing(featurizer.model, {name: modules[name] for name in names}, x, t, y, stop_early=False)
    with torch.no_grad():
        got_out = featurizer.model(x, t, class_labels=y).sample
    errors = {"output": relative(want_out, got_out)}
    for ref in want_taps:
        errors[ref] = relative(want_taps[ref], _unwrap(got[featurizer.check_blocks([ref])[0]]))
    return errors


@pytest.mark.parametrize("family", list(FAMILIES))
def test_converted_model_matches_openai_network(family, tmp_path):
    settings = {**SMALL, **FAMILIES[family]}
    errors = compare(settings, tmp_path, side=32 if settings["image_size"] == 32 else 64)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"{family}: {worst} differs by {errors[worst]:.2e}"
    assert len(errors) > 10   # output + every input, middle and output block


@pytest.mark.slow   # about 70 s and 5.3 GB on 2 cores: the 552M-parameter network built twice
def test_real_256_flags_match_openai_network(tmp_path):
    """OpenAI's 256 unconditional model (552M parameters) with its own flags; run at 64×64 (the network is
    convolutional, the weights are the real shapes) to keep the forward short."""
    settings = dict(parse_flags(PRESETS["adm-256-uncond"][0]).__dict__)
    for key in ("diffusion_steps", "noise_schedule", "predict_xstart"):
        settings.pop(key)
    settings["use_fp16"] = False   # fp16 is only the compute dtype of OpenAI's code; compare in fp32
    errors = compare(settings, tmp_path, side=64)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"{worst} differs by {errors[worst]:.2e}"
    assert len(errors) == 1 + 18 + 1 + 18


def test_legacy_qkv_split_is_not_a_three_way_split(tmp_path):
    """The trap: splitting legacy qkv rows in three equal parts scrambles heads; with several heads the
    result must differ from that naive split (and match OpenAI's, checked above)."""
    settings = {**SMALL}
    model = openai_model(settings)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    folder = convert(tmp_path / "model.pt", tmp_path / "converted", flags=flags_text(settings))
    unet = load_backbone(folder).denoiser
    qkv = model.input_blocks[4][1].qkv.weight.squeeze(-1)
    naive_q = qkv.chunk(3, dim=0)[0]
    assert not torch.allclose(unet.down_blocks[1].attentions[0].to_q.weight, naive_q)


def test_scheduler_is_adm_schedule(tmp_path):
    gaussian = pytest.importorskip("guided_diffusion.gaussian_diffusion")
    model = openai_model(SMALL)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    for schedule, steps in (("linear", 1000), ("linear", 250), ("cosine", 1000)):
        folder = convert(tmp_path / "model.pt", tmp_path / f"{schedule}{steps}",
                         flags=flags_text(SMALL) + f" --noise_schedule {schedule} --diffusion_steps {steps}")
        noise = load_backbone(folder).noise
        betas = torch.tensor(gaussian.get_named_beta_schedule(schedule, steps))
        want = torch.cumprod(1 - betas, 0).float()
        assert noise.num_steps == steps
        assert torch.allclose(noise.alphas_cumprod, want, rtol=1e-5, atol=1e-6)


def test_half_precision_checkpoint_loads(tmp_path):
    model = openai_model(SMALL)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, tmp_path / "half.pt")
    folder = convert(tmp_path / "half.pt", tmp_path / "converted", flags=flags_text(SMALL))
    unet = load_backbone(folder).denoiser
    assert unet.dtype == torch.float32
    assert torch.equal(unet.conv_in.weight, model.input_blocks[0][0].weight.half().float())


def test_legacy_torch_format_loads(tmp_path):
    """Checkpoints saved before torch 1.6's zip format cannot be memory-mapped; they are read whole."""
    model = openai_model(SMALL)
    torch.save(model.state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    folder = convert(tmp_path / "old.pt", tmp_path / "converted", flags=flags_text(SMALL))
    assert torch.equal(load_backbone(folder).denoiser.conv_in.weight, model.input_blocks[0][0].weight)


def test_class_label_is_a_setting(tmp_path):
    settings = {**SMALL, "class_cond": True}
    model = openai_model(settings)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    folder = convert(tmp_path / "model.pt", tmp_path / "converted", flags=flags_text(settings))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    feats = {label: Featurizer(load_backbone(folder, class_label=label)).extract(x, 50, "middle_block")["mid_block"]
             for label in (0, 0, 5)}
    assert not torch.allclose(feats[0], feats[5])
    with torch.no_grad():
        noised = Featurizer(load_backbone(folder)).noised(x, 50, 0, [0])
        _, taps = openai_taps(model, noised, torch.tensor([50]), torch.tensor([5]))
    assert relative(taps["middle_block"], feats[5]) < TOLERANCE


# ----------------------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("adm") / "small.pt"
    torch.save(openai_model(SMALL).state_dict(), path)
    return path


def test_convert_command_writes_a_diffusers_folder(small_checkpoint, tmp_path, capsys):
    out = tmp_path / "folder"
    assert main(["convert", "guided-diffusion", str(small_checkpoint), f"--flags={flags_text(SMALL)}", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"unet", "scheduler", "guided_diffusion.json", "model_index.json"}
    record = json.loads((out / "guided_diffusion.json").read_text())
    assert record["flags"] == flags_text(SMALL) and record["class"] == "UNet2DModel"
    assert "use it as --model" in capsys.readouterr().out


def test_info_lists_reference_names(small_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIFFREP_CACHE", str(tmp_path / "cache"))
    assert main(["info", "--model", str(small_checkpoint), "--flags", flags_text(SMALL), "--json",
                 str(tmp_path / "info.json")]) == 0
    printed = capsys.readouterr().out
    assert "converting" in printed   # once…
    rows = {r["name"]: r for r in json.loads((tmp_path / "info.json").read_text())}
    assert rows["up_blocks.1.upsamplers.0"]["guided_diffusion"] == "output_blocks.5"
    assert rows["mid_block"]["guided_diffusion"] == "middle_block" and rows["mid_block"]["diffssl"] == 10
    assert main(["info", "--model", str(small_checkpoint), "--flags", flags_text(SMALL)]) == 0
    assert "converting" not in capsys.readouterr().out   # … then read from the cache


def test_every_command_takes_a_checkpoint(small_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFREP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "features"
    assert main(["features", "--model", str(small_checkpoint), "--flags", flags_text(SMALL), "--data", "photos",
                 "--splits", "test", "--blocks", "output_blocks.5,16", "--t", "50", "--batch-size", "8",
                 "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["flags"] == flags_text(SMALL)
    assert json.loads((out / "features.json").read_text())["blocks"] == ["up_blocks.1.upsamplers.0"]


# ----------------------------------------------------------------------------- bad input

def bad(args, capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_checkpoints_are_refused_in_one_line(small_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    convert_args = ["convert", "guided-diffusion"]
    flags = f"--flags={flags_text(SMALL)}"
    (tmp_path / "other.pt").write_bytes(b"")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    assert "not a guided-diffusion UNet state dict" in bad(convert_args + [str(tmp_path / "other.pt"), flags, "--out", str(out)], capsys)
    with open(tmp_path / "object.pt", "wb") as f:
        pickle.dump(torch.nn.Linear(2, 2), f)
    assert "holds pickled Python objects" in bad(convert_args + [str(tmp_path / "object.pt"), flags, "--out", str(out)], capsys)
    data = small_checkpoint.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert "cannot read" in bad(convert_args + [str(tmp_path / "cut.pt"), flags, "--out", str(out)], capsys)
    wrong = flags_text({**SMALL, "num_channels": 64})
    assert "time_embed.0.weight is 128×32 in the file, 256×64 for these flags" in bad(
        convert_args + [str(small_checkpoint), f"--flags={wrong}", "--out", str(out)], capsys)
    assert "unknown preset 'lsun-dog'" in bad(convert_args + [str(small_checkpoint), "--preset", "lsun-dog", "--out", str(out)], capsys)
    assert "unknown guided-diffusion flag" in bad(convert_args + [str(small_checkpoint), "--flags=--image_size 32 --widht 3",
                                                                  "--out", str(out)], capsys)
    assert not out.exists() and not list(tmp_path.glob(".out*"))   # nothing half-written


def test_convert_refuses_to_overwrite(small_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert "not empty" in bad(["convert", "guided-diffusion", str(small_checkpoint), f"--flags={flags_text(SMALL)}",
                               "--out", str(out)], capsys)
    assert (out / "mine.txt").read_text() == "keep"
