"""Generative pre-training: outputs, exact resume, SIGKILL safety, 2 ranks on gloo, EDM and DiT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel
from safetensors.torch import load_file

from diffrep import DiffrepError, load_backbone
from diffrep.pretrain import PretrainConfig, pretrain

TINY = dict(resolution=16, widths=(8, 16), layers_per_block=1, batch_size=8, precision="fp32", warmup=2)


def _cfg(folder, **kw) -> PretrainConfig:
    return PretrainConfig(data=str(folder), channels=1, **{**TINY, **kw})


def _weights(run) -> dict:
    return load_file(str(run / "model" / "unet" / "diffusion_pytorch_model.safetensors"))


def _cli(*args, env_extra=None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "diffrep.cli", *args], env=env, capture_output=True, text=True, **kw)


def test_run_writes_a_loadable_diffusers_folder(labelled_folder, tmp_path):
    summary = pretrain(tmp_path / "run", _cfg(labelled_folder, steps=3, checkpoint_every=2))
    run = tmp_path / "run"
    assert summary["steps"] == 3 and summary["final_loss"] > 0
    assert summary["train_images"] == 28  # 32 train-split images minus the probes' validation eighth
    assert json.loads((run / "pretrain.json").read_text())["steps"] == 3
    assert (run / "samples.png").stat().st_size > 0
    UNet2DModel.from_pretrained(run / "model" / "unet")
    DDPMPipeline.from_pretrained(run / "model")
    assert load_backbone(run).noise.kind == "vp"  # a run folder is accepted directly
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 3]


def test_auto_precision_takes_bf16_only_where_it_has_native_kernels(labelled_folder, tmp_path):
    from diffrep.core.precision import native_bf16
    pretrain(tmp_path / "auto", _cfg(labelled_folder, steps=1, precision="auto", device="cpu"))
    ran = json.loads((tmp_path / "auto" / "pretrain.json").read_text())["config"]["precision"]
    assert ran == ("bf16" if native_bf16("cpu") else "fp32")
    assert native_bf16("meta") is False


def test_resume_continues_exactly(labelled_folder, tmp_path):
    pretrain(tmp_path / "straight", _cfg(labelled_folder, steps=4, checkpoint_every=2))
    pretrain(tmp_path / "split", _cfg(labelled_folder, steps=2, checkpoint_every=2))
    pretrain(tmp_path / "split", resume=True, overrides={"steps": 4})
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_time_limit_stops_early_and_saves_what_steps_reached_gives(labelled_folder, tmp_path):
    summary = pretrain(tmp_path / "timed", _cfg(labelled_folder, steps=50), time_limit_s=0)
    assert summary["steps"] == 1 and summary["stopped_by_time_limit"]
    assert json.loads((tmp_path / "timed" / "pretrain.json").read_text())["steps"] == 1
    pretrain(tmp_path / "fixed", _cfg(labelled_folder, steps=1))
    a, b = _weights(tmp_path / "timed"), _weights(tmp_path / "fixed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert not pretrain(tmp_path / "fixed", resume=True, overrides={"steps": 2})["stopped_by_time_limit"]


def test_existing_run_is_not_overwritten(labelled_folder, tmp_path):
    pretrain(tmp_path / "run", _cfg(labelled_folder, steps=1))
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(DiffrepError, match="already holds a run; pass --resume"):
        pretrain(tmp_path / "run", _cfg(labelled_folder, steps=1))
    with pytest.raises(DiffrepError, match="cannot change it"):
        pretrain(tmp_path / "run", resume=True, overrides={"lr": 0.1})
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_sigkill_loses_at_most_one_interval(labelled_folder, tmp_path):
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(labelled_folder), "--channels", "1", "--resolution", "16", "--widths", "8,16",
            "--layers-per-block", "1", "--batch-size", "8", "--precision", "fp32", "--checkpoint-every", "2",
            "--steps", "400", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "diffrep.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "log.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert saved >= 2 and saved >= logged[-1] and saved < 400  # killed mid-run, last checkpoint intact
    done = _cli(*args[:-4], "--steps", str(saved + 2), "--out", str(run), "--resume")
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "pretrain.json").read_text())["steps"] == saved + 2


def test_two_ranks_on_gloo(labelled_folder, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",  # a free port
           "-m", "diffrep.cli", "pretrain", "--data", str(labelled_folder), "--channels", "1", "--resolution", "16",
           "--widths", "8,16", "--layers-per-block", "1", "--batch-size", "8", "--precision", "fp32",
           "--steps", "3", "--checkpoint-every", "2", "--out", str(run)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "pretrain.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3
    load_backbone(run)


def test_edm_objective_gives_an_edm_backbone(labelled_folder, tmp_path):
    pretrain(tmp_path / "edm", _cfg(labelled_folder, steps=2, objective="edm"))
    bb = load_backbone(tmp_path / "edm")
    assert bb.noise.kind == "edm"
    assert bb.noise.check(0.06) == 0.06


def test_dit_arch_trains_and_loads(labelled_folder, tmp_path):
    pretrain(tmp_path / "dit", _cfg(labelled_folder, steps=2, arch="dit"))
    bb = load_backbone(tmp_path / "dit")
    assert type(bb.denoiser).__name__ == "DiTTransformer2DModel" and not bb.is_latent


def test_bad_config_is_refused(labelled_folder, tmp_path):
    with pytest.raises(DiffrepError, match="not divisible"):
        pretrain(tmp_path / "x", _cfg(labelled_folder, resolution=15))
    with pytest.raises(DiffrepError, match="objective must be one of"):
        pretrain(tmp_path / "y", _cfg(labelled_folder, objective="flow"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_random_shift_translates_within_bounds():
    from diffrep.data import random_shift

    x = torch.zeros(4, 1, 8, 8)
    x[:, :, 3, 3] = 1.0
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and torch.all(y.sum((1, 2, 3)) == 1)  # the dot moved, nothing was lost
    rows, cols = torch.nonzero(y[:, 0], as_tuple=True)[1:]
    assert rows.sub(3).abs().max() <= 2 and cols.sub(3).abs().max() <= 2
    again = random_shift(x, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, again)


def test_random_crop_takes_windows_of_each_image():
    from diffrep.data import random_crop

    x = torch.arange(3 * 2 * 10 * 10, dtype=torch.float32).reshape(3, 2, 10, 10)
    y = random_crop(x, 4, torch.Generator().manual_seed(0))
    assert y.shape == (3, 2, 4, 4)
    for img, win in zip(x, y):  # every value is unique, so the corner fixes the offset
        dy, dx = divmod(int(win[0, 0, 0] - img[0, 0, 0]), 10)
        torch.testing.assert_close(win, img[:, dy:dy + 4, dx:dx + 4])
    torch.testing.assert_close(y, random_crop(x, 4, torch.Generator().manual_seed(0)))


def test_crop_trains_on_windows_and_the_model_runs_on_whole_images(labelled_folder, tmp_path):
    from diffrep.core import Featurizer

    pretrain(tmp_path / "crop", _cfg(labelled_folder, steps=2, crop=8, mid_attention=False))
    bb = load_backbone(tmp_path / "crop")
    assert bb.denoiser.config.sample_size == 8
    feats = Featurizer(bb).extract(torch.rand(2, 1, 16, 16), t=10, blocks=["mid_block"], seed=0)
    assert feats["mid_block"].shape[-2:] == (8, 8)  # a 16×16 image (twice the crop) at the mid block's stride 2
    with pytest.raises(DiffrepError, match="fully convolutional"):
        pretrain(tmp_path / "attn", _cfg(labelled_folder, crop=8))  # the mid block's attention is on by default
    with pytest.raises(DiffrepError, match="between 1 and the resolution"):
        pretrain(tmp_path / "big", _cfg(labelled_folder, crop=32, mid_attention=False))
    assert not (tmp_path / "attn").exists() and not (tmp_path / "big").exists()


@pytest.fixture(scope="module")
def captioned_folder(tmp_path_factory):
    """A COCO-panoptic folder of 6 captioned train scenes and 2 val scenes."""
    from diffrep.data.coco_panoptic import write_split
    from diffrep.data.panoptic_scenes import categories, scene
    root = tmp_path_factory.mktemp("captioned")
    for split, n in (("train", 6), ("val", 2)):
        write_split(root, split, (scene(split, i) for i in range(n)), categories())
    return root


def _t2i(folder, **kw) -> PretrainConfig:
    return PretrainConfig(data=str(folder), captions=True, channels=3, **{**TINY, **kw})


def test_captioned_run_gives_a_text_to_image_model_that_reads_its_prompts(captioned_folder, tmp_path):
    from diffusers import UNet2DConditionModel
    summary = pretrain(tmp_path / "t2i", _t2i(captioned_folder, steps=2, checkpoint_every=2))
    assert summary["text_encoder"] == "minilm" and summary["captions"] == 6
    model = tmp_path / "t2i" / "model"
    assert UNet2DConditionModel.from_pretrained(model / "unet").config.cross_attention_dim == 384
    assert sum(f.stat().st_size for f in model.rglob("*")) < 5e6   # the bundled encoder is kept by name, not copied
    backbone = load_backbone(model)
    grass, brick = backbone.condition(1, "a three on grass"), backbone.condition(1, "a seven on brick wall")
    assert grass.shape == (1, 32, 384) and not torch.allclose(grass, brick)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    with torch.no_grad():
        assert not torch.allclose(backbone.denoiser(x, t, grass).sample, backbone.denoiser(x, t, brick).sample)
    assert (tmp_path / "t2i" / "samples.png").stat().st_size > 0


def test_captioned_resume_continues_exactly(captioned_folder, tmp_path):
    pretrain(tmp_path / "straight", _t2i(captioned_folder, steps=4, checkpoint_every=2))
    pretrain(tmp_path / "split", _t2i(captioned_folder, steps=2, checkpoint_every=2))
    pretrain(tmp_path / "split", resume=True, overrides={"steps": 4})
    a, b = (load_file(str(tmp_path / r / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
            for r in ("straight", "split"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_captions_on_data_without_them_is_refused_in_one_line(labelled_folder, captioned_folder, tmp_path):
    with pytest.raises(DiffrepError, match="not a COCO-panoptic folder"):
        pretrain(tmp_path / "a", _t2i(labelled_folder, steps=1))
    raw = json.loads((captioned_folder / "annotations" / "panoptic_train.json").read_text())
    for image in raw["images"][:2]:
        del image["caption"]
    bare = tmp_path / "bare"
    import shutil
    shutil.copytree(captioned_folder, bare)
    (bare / "annotations" / "panoptic_train.json").write_text(json.dumps(raw))
    with pytest.raises(DiffrepError, match="2 of 6 images have no caption"):
        pretrain(tmp_path / "b", _t2i(bare, steps=1))
    with pytest.raises(DiffrepError, match="--captions trains a text-conditional UNet"):
        _t2i(captioned_folder, arch="dit").check()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_init_from_starts_at_a_saved_models_weights_and_refuses_another_architecture(captioned_folder, tmp_path):
    pretrain(tmp_path / "first", _t2i(captioned_folder, steps=2, checkpoint_every=2))
    source = load_file(str(tmp_path / "first" / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    pretrain(tmp_path / "next", _t2i(captioned_folder, steps=1, lr=1e-12, init_from=str(tmp_path / "first" / "model")))
    continued = load_file(str(tmp_path / "next" / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    fresh = pretrain(tmp_path / "fresh", _t2i(captioned_folder, steps=1, lr=1e-12))
    assert fresh["config"]["init_from"] == ""
    scratch = load_file(str(tmp_path / "fresh" / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    for k in source:   # a step at lr 1e-12 leaves the weights where they started
        torch.testing.assert_close(continued[k], source[k], rtol=0, atol=1e-6)
    assert any(not torch.allclose(scratch[k], source[k]) for k in source)
    with pytest.raises(DiffrepError, match="its architecture differs"):
        pretrain(tmp_path / "wide", _t2i(captioned_folder, steps=1, widths=(16, 16, 16, 16),
                                        init_from=str(tmp_path / "first" / "model")))
    with pytest.raises(DiffrepError, match="no diffusers denoiser weights"):
        pretrain(tmp_path / "none", _t2i(captioned_folder, steps=1, init_from=str(tmp_path)))
    assert not (tmp_path / "wide").exists() and not (tmp_path / "none").exists()


def test_prompt_cache_gives_the_encoders_states_and_falls_back_when_too_large():
    from diffrep.core.text import PromptCache, load_text_encoder
    text = load_text_encoder("minilm")
    captions = ["a three on grass", "a seven on brick wall", "a three on grass"]
    cached = PromptCache(text, captions, budget=2 ** 30)
    asked = ["a seven on brick wall", "", "a three on grass"]
    assert cached.table is not None and len(cached.table) == 3        # unique captions and the empty prompt
    torch.testing.assert_close(cached(asked), text.prompts(asked), rtol=1e-4, atol=1e-5)
    assert PromptCache(text, captions, budget=1).table is None        # over budget: encoded at each call
    torch.testing.assert_close(PromptCache(text, captions, budget=1)(asked), text.prompts(asked))
