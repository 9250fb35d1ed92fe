"""The CUDA code path: run on a machine with a GPU (skipped elsewhere). `scripts/gpu-check.sh` runs
these and the GPU benchmarks in one go (DEVELOPERS.md)."""

from __future__ import annotations

import json

import pytest
import torch

from diffrep import DiffusionFeatures, Featurizer, load_backbone
from diffrep.cli import main
from diffrep.features import FeatureStore, collect_features

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_features_match_cpu_features(unet_dir):
    images = torch.rand(16, 1, 32, 32) * 2 - 1
    feats = {}
    for device in ("cpu", "cuda"):
        source = DiffusionFeatures(Featurizer(load_backbone(unet_dir, device)), ["mid_block", "up_blocks.0"], [25],
                                   ensemble=2, seed=0)
        feats[device] = collect_features(source, images, [1, 2], batch_size=8)
    for k in feats["cpu"]:
        torch.testing.assert_close(feats["cuda"][k], feats["cpu"][k], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_casts_the_weights_and_extracts(unet_dir, latent_unet_dir, precision):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    for folder in (unet_dir, latent_unet_dir):
        backbone = load_backbone(folder, "cuda", precision)
        assert backbone.denoiser.dtype == dtype and backbone.denoiser.device.type == "cuda"
        assert backbone.vae is None or backbone.vae.dtype == dtype
        f = Featurizer(backbone)
        images = torch.rand(2, backbone.image_channels, backbone.image_size, backbone.image_size) * 2 - 1
        out = f.extract(images, 25, f.default_blocks("probe")[:2], precision=precision)
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())


def test_features_command_on_cuda(unet_dir, labelled_folder, tmp_path):
    out = tmp_path / "f"
    assert main(["features", "--model", str(unet_dir), "--data", str(labelled_folder), "--blocks", "mid_block",
                 "--t", "25", "--device", "cuda", "--precision", "fp16", "--workers", "2", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["device"] == "cuda"
    assert FeatureStore(out / "train").n == 32
