"""Loading backbones from folders, and each way a folder or a data set can be wrong."""

from __future__ import annotations

import shutil

import pytest
import torch

from diffrep import DiffrepError, load_backbone
from diffrep.data import image_folder, load, mnist, read_image
from diffrep.features import load_features, save_features


def test_pipeline_folders_load_with_their_parts(unet_dir, latent_unet_dir, dit_dir):
    pixel, latent, dit = load_backbone(unet_dir), load_backbone(latent_unet_dir), load_backbone(dit_dir)
    assert not pixel.is_latent and pixel.image_size == 32 and pixel.noise.kind == "vp"
    assert latent.is_latent and latent.text_encoder is not None and latent.image_size == 32
    assert dit.is_latent and dit.noise.kind == "edm"
    assert not any(p.requires_grad for p in latent.denoiser.parameters())


def _copy(pipeline, tmp_path):
    """A copy of a pipeline folder that a test may break."""
    broken = tmp_path / "pipe"
    shutil.copytree(pipeline, broken)
    return broken


def test_missing_weights_are_named(unet_dir, tmp_path):
    broken = _copy(unet_dir, tmp_path)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(DiffrepError, match="no weights.*diffusion_pytorch_model.safetensors"):
        load_backbone(broken)


def test_missing_config_is_named(unet_dir, tmp_path):
    broken = _copy(unet_dir, tmp_path)
    (broken / "unet" / "config.json").unlink()
    with pytest.raises(DiffrepError, match="no config.json"):
        load_backbone(broken)


def test_latent_pipeline_without_vae_is_refused(latent_unet_dir, tmp_path):
    broken = _copy(latent_unet_dir, tmp_path)
    shutil.rmtree(broken / "vae")
    with pytest.raises(DiffrepError, match="no vae/ folder"):
        load_backbone(broken)


def test_corrupt_weights_are_reported(unet_dir, tmp_path):
    broken = _copy(unet_dir, tmp_path)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DiffrepError, match="cannot load UNet2DModel"):
        load_backbone(broken)


def test_hub_id_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DiffrepError, match="could not fetch 'someone/some-model'.*offline"):
        load_backbone("someone/some-model")


def test_nonsense_spec_is_refused():
    with pytest.raises(DiffrepError, match="neither a bundled model"):
        load_backbone("./no/such/folder")


# ---------------------------------------------------------------- data

def test_mnist_split_is_fixed_and_disjoint():
    train, test = mnist("train"), mnist("test")
    assert len(train) == 4000 and len(test) == 1000
    assert train.images.shape[1:] == (1, 32, 32) and train.images.min() == -1 and train.images.max() <= 1
    again = mnist("test")
    torch.testing.assert_close(test.images, again.images)
    flat_train = {tuple(x.flatten().tolist()) for x in train.images[:, :, 2:-2, 2:-2]}
    assert not any(tuple(x.flatten().tolist()) in flat_train for x in test.images[:200, :, 2:-2, 2:-2])


def test_image_folder_labels_from_subfolders(labelled_folder):
    data = image_folder(labelled_folder, channels=1, size=32)
    assert data.images.shape == (40, 1, 32, 32) and data.labels is not None
    assert data.classes == sorted(data.classes) and len(set(data.labels.tolist())) == len(data.classes)
    train, test = load(str(labelled_folder), "train", channels=1, size=32), load(str(labelled_folder), "test", channels=1, size=32)
    assert len(train) == 32 and len(test) == 8


def test_user_digits_are_padded_as_the_bundled_ones(labelled_folder):
    """28×28 digit files fitted to a 32×32 model equal the bundled MNIST digits (zero-padded), pixel for pixel."""
    bundled = mnist("train")
    files = sorted(labelled_folder.rglob("*.png"), key=lambda p: p.name)
    for path in files[:5]:
        image, how = read_image(path, 1, 32)
        assert how == "padded" and torch.equal(image, bundled.images[int(path.stem)])


def test_empty_folder(tmp_path):
    with pytest.raises(DiffrepError, match="holds no images"):
        image_folder(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(DiffrepError, match="does not exist"):
        image_folder(tmp_path / "nothing")


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(DiffrepError, match="cannot read image .*bad.png"):
        image_folder(tmp_path)


# ---------------------------------------------------------------- feature files

def test_feature_file_round_trip(tmp_path):
    tensors = {"t=5/mid_block": torch.randn(4, 3, 2, 2), "labels": torch.arange(4)}
    save_features(tmp_path / "f.safetensors", tensors, {"ts": [5], "blocks": ["mid_block"]})
    got, meta = load_features(tmp_path / "f.safetensors")
    assert meta == {"ts": [5], "blocks": ["mid_block"]}
    for k in tensors:
        torch.testing.assert_close(got[k], tensors[k])
    assert not (tmp_path / "f.safetensors.tmp").exists()


def test_corrupt_feature_file(tmp_path):
    save_features(tmp_path / "f.safetensors", {"x": torch.zeros(100, 100)}, {})
    data = (tmp_path / "f.safetensors").read_bytes()
    (tmp_path / "f.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DiffrepError, match="corrupt"):
        load_features(tmp_path / "f.safetensors")
    (tmp_path / "g.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(DiffrepError, match="corrupt or not a safetensors file"):
        load_features(tmp_path / "g.safetensors")


def test_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(DiffrepError, match="not a diffrep feature file"):
        load_features(tmp_path / "w.safetensors")


def test_dit_folders_as_published_on_the_hub_load(dit_dir, tmp_path):
    """Hub DiT folders name their class Transformer2DModel (diffusers remaps it): they load as DiT."""
    import json
    import shutil

    copy = tmp_path / "dit"
    shutil.copytree(dit_dir, copy)
    config = copy / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": "Transformer2DModel"}))
    published, ours = load_backbone(copy), load_backbone(dit_dir)
    assert type(published.denoiser).__name__ == "DiTTransformer2DModel"
    assert all(torch.equal(a, b) for a, b in zip(published.denoiser.state_dict().values(),
                                                 ours.denoiser.state_dict().values()))


def test_schedulers_are_read_where_they_sit_or_the_assumption_is_said(dit_dir, unet_dir, tmp_path, capsys):
    import shutil

    lone = tmp_path / "lone"
    shutil.copytree(dit_dir, lone)   # transformer/ as a lone folder, its EDM scheduler in ../scheduler
    assert load_backbone(lone / "transformer").noise.kind == "edm"
    inside = tmp_path / "inside"
    shutil.copytree(dit_dir / "transformer", inside)
    shutil.copytree(dit_dir / "scheduler", inside / "scheduler")
    assert load_backbone(inside).noise.kind == "edm"
    capsys.readouterr()
    bare = tmp_path / "bare"
    shutil.copytree(unet_dir / "unet", bare / "unet")
    assert load_backbone(bare).noise.kind == "vp"
    assert "assuming DDPM's default linear schedule" in capsys.readouterr().out
