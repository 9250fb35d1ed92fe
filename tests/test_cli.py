"""The command line end to end on a tiny model and a tiny labelled folder, and its error messages."""

from __future__ import annotations

import json

import pytest
import torch

from diffrep.cli import main
from diffrep.features import Cell, FeatureStore


def test_info_lists_blocks(unet_dir, tmp_path, capsys):
    assert main(["info", "--model", str(unet_dir), "--json", str(tmp_path / "info.json")]) == 0
    out = capsys.readouterr().out
    assert "UNet2DModel" in out and "mid_block" in out and "up_blocks.0.resnets.1" in out
    info = json.loads((tmp_path / "info.json").read_text())
    mid = next(row for row in info if row["name"] == "mid_block")
    inputs = sum(1 for row in info if (row["guided_diffusion"] or "").startswith("input_blocks."))
    assert mid == {"name": "mid_block", "channels": 8, "stride": 2, "top_level": True,
                   "guided_diffusion": "middle_block", "diffssl": inputs + 1}


def test_features_then_sweep_end_to_end(unet_dir, labelled_folder, tmp_path, capsys):
    feats = tmp_path / "feats"
    assert main(["features", "--model", str(unet_dir), "--data", str(labelled_folder), "--blocks",
                 "mid_block,up_blocks.0", "--t", "25", "--out", str(feats)]) == 0
    assert "is padded" in capsys.readouterr().out
    train = FeatureStore(feats / "train")
    assert train.array(Cell(25, "mid_block")).shape == (32, 8, 16, 16)
    assert train.array(Cell(25, "up_blocks.0")).shape == (32, 8, 32, 32)
    assert train.identity["ts"] == [25] and train.identity["blocks"] == ["mid_block", "up_blocks.0"]
    assert len(train.array("labels")) == 32

    out = tmp_path / "sweep"
    args = ["sweep", "--model", str(unet_dir), "--data", str(labelled_folder), "--t", "25,100", "--pools", "1,2",
            "--epochs", "3", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "sweep.json").read_text())
    blocks = ["conv_in", "down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    assert result["blocks"] == blocks and result["ts"] == [25, 100]
    assert len(result["cells"]) == 2 * len(blocks) * 2
    assert {"t", "block", "pool", "accuracy"} <= set(result["best"])
    aug = result["best"]["augmented"]  # the chosen cell refit on all train images + distorted copies
    assert aug["copies"] == 16 and aug["distortion"]["rotate"] == 15 and aug["distortion"]["elastic"] == 2
    assert aug["fit_images"] == result["n_train"] and 0 <= aug["accuracy"] <= 1
    assert "augmented" not in result["cells"][0] and "16 distorted copies (rotation ±15°" in printed
    assert set(result["baselines"]) >= {"pixels", "random_init"}
    assert all(0 <= c["accuracy"] <= 1 for c in result["cells"])
    assert (out / "heatmap.png").stat().st_size > 0
    assert "best (chosen on the train split" in printed and "cross-validated" in printed and "raw pixels" in printed
    short = result["shortlist"]  # the 10 best cells on validation, ranked by 5-fold cross-validation
    chosen = {k: v for k, v in result["best"].items() if k != "augmented"}
    assert len(short) == 10 and chosen == max(short, key=lambda c: c["cv_accuracy"])
    assert [c["val_accuracy"] for c in short] == sorted((c["val_accuracy"] for c in result["cells"]), reverse=True)[:10]
    assert result["baselines"]["random_init"] == result["baselines"]["random_init_best"]["accuracy"]
    assert "cv_accuracy" in result["baselines"]["random_init_best"]
    stages = result["stages"]   # every stage timed and its FLOPs counted, against this machine's matmul rate
    assert list(stages) == ["set-up", "features", "baseline features", "probe grid", "cross-validation",
                            "distorted copies", "final probe", "FLOP counting"]
    assert sum(row["seconds"] for row in stages.values()) <= result["timing_s"]["total"] + 0.1   # the stages add up
    assert result["precision"] in ("fp32", "bf16") and stages["features"]["precision"] == result["precision"]
    for name, row in stages.items():
        assert row["seconds"] > 0 and row["gflop"] >= 0 and (row["gflop"] == 0) == (name in ("set-up", "FLOP counting"))
        assert result["timing_s"][name] == row["seconds"] and row["matmul_gflop_per_s"] > 0
        assert row["matmul_fraction"] == pytest.approx(row["gflop_per_s"] / row["matmul_gflop_per_s"], abs=1e-3)
    assert stages["features"]["gflop"] > 0 and stages["probe grid"]["gflop"] > 0
    assert "of matmul" in printed

    assert main(args) == 0  # the second run reuses the cached features
    assert "reusing cached features" in capsys.readouterr().out
    again = json.loads((out / "sweep.json").read_text())
    assert again["cells"] == result["cells"] and again["best"] == result["best"]

    reuse = tmp_path / "sweep-reuse"
    assert main(["sweep", "--model", str(unet_dir), "--data", str(labelled_folder), "--features", str(feats),
                 "--pools", "1", "--epochs", "3", "--no-baselines", "--shortlist", "0", "--out", str(reuse)]) == 0
    result = json.loads((reuse / "sweep.json").read_text())
    assert result["ts"] == [25] and [c["block"] for c in result["cells"]] == ["mid_block", "up_blocks.0"]
    assert "shortlist" not in result and "cv_accuracy" not in result["best"]  # chosen on validation alone


@pytest.mark.parametrize("args, message", [
    (["--blocks", "mid_blok", "--t", "5"], "unknown block(s) mid_blok; valid names: conv_in, "),
    (["--blocks", "mid_block", "--t", "1000"], "t=1000 is outside the schedule"),
])
def test_features_bad_input(unet_dir, labelled_folder, tmp_path, capsys, args, message):
    code = main(["features", "--model", str(unet_dir), "--data", str(labelled_folder), *args, "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("args, message", [
    (["--folds", "1"], "--folds must be at least 2, not 1"),
    (["--folds", "33"], "not 33; pass --folds N or --shortlist 0"),
    (["--shortlist", "-1"], "--shortlist must be at least 0"),
    (["--augment", "-2"], "--augment must be at least 0, not -2"),
    (["--rotate", "-5"], "--rotate must be at least 0, not -5.0"),
    (["--scale", "1"], "--scale must be below 1, not 1.0"),
])
def test_sweep_bad_settings_fail_before_any_work(unet_dir, labelled_folder, tmp_path, capsys, args, message):
    code = main(["sweep", "--model", str(unet_dir), "--data", str(labelled_folder), *args, "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()  # no features were computed or cached


@pytest.mark.parametrize("layout, message", [
    ({"train.safetensors": b"garbage"}, "written by an older diffrep"),
    ({"train/store.json": b"{}"}, "is incomplete (its extraction did not finish"),
    ({"train/other.txt": b""}, "is not a feature store"),
])
def test_sweep_with_unusable_features(unet_dir, labelled_folder, tmp_path, capsys, layout, message):
    for name, data in layout.items():
        (tmp_path / "f" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "f" / name).write_bytes(data)
    code = main(["sweep", "--model", str(unet_dir), "--data", str(labelled_folder), "--features", str(tmp_path / "f"),
                 "--out", str(tmp_path / "s")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_sweep_needs_labels(unet_dir, tmp_path, capsys):
    from PIL import Image

    for i in range(5):
        Image.new("L", (32, 32), color=i * 40).save(tmp_path / f"{i}.png")
    code = main(["sweep", "--model", str(unet_dir), "--data", str(tmp_path), "--out", str(tmp_path / "s")])
    assert code == 2 and "has no labels" in capsys.readouterr().err


def test_pretrain_bad_data(tmp_path, capsys):
    code = main(["pretrain", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run"), "--steps", "1"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_pretrain_after_a_failed_bf16_run_still_works(labelled_folder, tmp_path, capsys):
    """A failed run must not leave accelerate's process-wide settings behind for the next run."""
    assert main(["pretrain", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "a"), "--precision", "bf16"]) == 2
    assert main(["pretrain", "--data", str(labelled_folder), "--channels", "1", "--resolution", "16", "--widths",
                 "8,16", "--layers-per-block", "1", "--batch-size", "4", "--steps", "1", "--precision", "fp32",
                 "--out", str(tmp_path / "b")]) == 0


def test_pretrain_time_limit_from_the_command_line(labelled_folder, tmp_path, capsys):
    tiny = ["pretrain", "--data", str(labelled_folder), "--channels", "1", "--resolution", "16", "--widths", "8,16",
            "--layers-per-block", "1", "--batch-size", "4", "--steps", "40", "--precision", "fp32"]
    assert main([*tiny, "--time-limit", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "--time-limit must be at least 0" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*tiny, "--time-limit", "0", "--out", str(tmp_path / "run")]) == 0
    assert "time limit of 0 s reached at step 1 of 40" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "pretrain.json").read_text())
    assert summary["steps"] == 1 and summary["stopped_by_time_limit"] and summary["config"]["steps"] == 40


def test_fit_images_converts_and_says_so(capsys):
    from diffrep import DiffrepError
    from diffrep.data import fit_images

    grey = torch.linspace(-1, 1, 28 * 28).view(1, 1, 28, 28)
    rgb = fit_images(grey, 3, 32)
    assert rgb.shape == (1, 3, 32, 32) and torch.equal(rgb[:, 0], rgb[:, 2])
    out = capsys.readouterr().out
    assert "from 1 to 3 channel(s)" in out and "from 28×28 to 32×32" in out
    with pytest.raises(DiffrepError, match="4-channel images"):
        fit_images(grey, 4, 28)
