"""Bad input, class by class, as a new user meets it: every case exits non-zero with a one-line
message naming the problem, no traceback, nothing half-written and no temporary file left."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffrep.cli import main

from .conftest import write_folder

PNG = Image.fromarray(np.full((40, 44, 3), 128, np.uint8))


def run_bad(args: list[str], capsys) -> str:
    """Run a command that must fail; return its one-line message."""
    try:
        rc = main(args)
    except SystemExit as exit_:   # argparse's own errors (usage + one error line)
        rc = exit_.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]   # not progress bars
    assert lines and "error:" in lines[-1]
    assert len(lines) == 1 or lines[0].startswith("usage:")
    return lines[-1]


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith((".tmp", ".lock")) or p.name.endswith(".tmp")]


@pytest.fixture
def inputs(tmp_path, unet_dir, rgb_unet_dir, labelled_folder):
    """Everything the commands read: models, a class folder, a segmentation folder, two images."""
    seg = tmp_path / "seg"
    write_folder(seg / "train", 3, "train")
    write_folder(seg / "test", 2, "test")
    PNG.save(tmp_path / "a.png")
    PNG.save(tmp_path / "b.png")
    return {"unet": str(unet_dir), "rgb": str(rgb_unet_dir), "digits": str(labelled_folder), "seg": str(seg),
            "a": str(tmp_path / "a.png"), "b": str(tmp_path / "b.png"), "root": tmp_path}


@pytest.fixture
def seg_run(inputs, tmp_path_factory):
    run = tmp_path_factory.mktemp("segrun") / "run"
    assert main(["segment", "train", "--model", inputs["rgb"], "--data", inputs["seg"], "--out", str(run), "--k", "1",
                 "--max-epochs", "1", "--pixels-per-image", "100", "--t", "50", "--no-baselines"]) == 0
    return run


def commands(i: dict, out: str) -> dict[str, list[str]]:
    """Each command that writes, with its output path set to `out`."""
    return {
        "features": ["features", "--model", i["unet"], "--data", i["digits"], "--blocks", "mid_block", "--t", "10",
                     "--out", out],
        "sweep": ["sweep", "--model", i["unet"], "--data", i["digits"], "--t", "10", "--blocks", "mid_block",
                  "--epochs", "1", "--out", out],
        "segment train": ["segment", "train", "--model", i["rgb"], "--data", i["seg"], "--out", out],
        "segment predict": ["segment", "predict", "--run", "RUN", i["a"], "--out", out],
        "segment eval": ["segment", "eval", "--run", "RUN", "--data", i["seg"], "--out", out],
        "match-eval": ["match-eval", "--model", i["unet"], "--pairs", "2", "--out", out],
        "match-sweep": ["match-sweep", "--model", i["unet"], "--pairs", "2", "--out", out],
        "pretrain": ["pretrain", "--data", i["digits"], "--steps", "1", "--out", out],
        "classify": ["classify", "--model", i["unet"], "--data", i["digits"], "--t", "10", "--blocks", "mid_block",
                     "--heads", "linear", "--epochs", "1", "--out", out],
        "info": ["info", "--model", i["unet"], "--json", out],
    }


FOLDER_COMMANDS = ["features", "sweep", "classify", "segment train", "segment predict", "segment eval",
                   "match-eval", "match-sweep", "pretrain"]


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_output_folder_that_is_a_file_or_read_only(command, inputs, seg_run, capsys):
    a_file = inputs["root"] / "taken"
    a_file.write_text("keep me")
    args = [str(seg_run) if a == "RUN" else a for a in commands(inputs, str(a_file))[command]]
    assert "is a file, not a folder" in run_bad(args, capsys)
    assert a_file.read_text() == "keep me"
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked_dir = inputs["root"] / "readonly"
    locked_dir.mkdir()
    locked_dir.chmod(stat.S_IRUSR | stat.S_IXUSR)
    args = [str(seg_run) if a == "RUN" else a for a in commands(inputs, str(locked_dir))[command]]
    assert "not writable" in run_bad(args, capsys)


def test_output_file_paths(inputs, capsys):
    folder = inputs["root"] / "adir"
    folder.mkdir()
    assert "is a folder; give a file name" in run_bad(commands(inputs, str(folder))["info"], capsys)
    assert "must end in .json" in run_bad(commands(inputs, str(inputs["root"] / "x.txt"))["info"], capsys)
    taken = inputs["root"] / "existing_file"
    taken.write_text("keep me")
    assert "must end in .png" in run_bad(["match", inputs["a"], inputs["b"], "--model", inputs["unet"],
                                          "--out", str(taken)], capsys)
    assert taken.read_text() == "keep me" and not list(inputs["root"].glob("existing_file*.png"))
    assert leftovers(inputs["root"]) == []


def test_a_failed_command_leaves_no_new_folder(inputs, capsys):
    out = inputs["root"] / "never"
    run_bad(["sweep", "--model", inputs["unet"], "--data", inputs["digits"], "--blocks", "nope", "--out", str(out)], capsys)
    assert not out.exists()


def test_a_second_command_into_a_locked_folder_is_refused(inputs, capsys):
    from diffrep.runs import locked

    out = inputs["root"] / "busy"
    with locked(out):
        message = run_bad(commands(inputs, str(out))["features"], capsys)
    assert "another diffrep command is writing to" in message
    assert sorted(p.name for p in out.iterdir()) == []


def test_stale_temporary_files_of_a_killed_run_are_swept(inputs):
    out = inputs["root"] / "killed"
    (out / "cache").mkdir(parents=True)
    for name in (".tmp96EA69", ".train.safetensors.tmp"):   # safetensors' own, and ours
        (out / "cache" / name).write_bytes(b"half")
    assert main(commands(inputs, str(out))["features"]) == 0
    assert leftovers(out) == [] and (out / "train" / "manifest.json").is_file() and (out / "features.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["features", "--batch-size", "0"], "--batch-size must be at least 1, not 0"),
    (["features", "--batch-size", "-4"], "--batch-size must be at least 1, not -4"),
    (["features", "--pool", "0"], "--pool must be at least 1, not 0"),
    (["features", "--splits", "bogus"], "--splits must be one of train, val, test, not 'bogus'"),
    (["sweep", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["sweep", "--pools", "0"], "--pools must be at least 1, not 0"),
    (["sweep", "--epochs", "0"], "--epochs must be at least 1, not 0"),
    (["segment train", "--k", "0"], "--k must be at least 1"),
    (["segment train", "--max-epochs", "0"], "--max-epochs must be at least 1"),
    (["segment train", "--extract-batch", "0"], "--extract-batch must be at least 1"),
    (["segment train", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["segment train", "--pixels-per-image", "0"], "--pixels-per-image must be at least 1"),
    (["segment train", "--pool-mb", "0"], "--pool-mb must be above 0"),
    (["segment train", "--labelled", "0"], "--labelled must be at least 1"),
    (["segment eval", "--n", "-2"], "--n must be at least 1, not -2"),
    (["segment eval", "--n", "0"], "--n must be at least 1, not 0"),
    (["match-eval", "--pairs", "0"], "--pairs must be at least 1, not 0"),
    (["pretrain", "--resolution", "0"], "--resolution must be at least 1, not 0"),
    (["pretrain", "--channels", "2"], "--channels must be one of 1, 3, not 2"),
    (["pretrain", "--lr", "-1"], "--lr must be above 0, not -1.0"),
    (["pretrain", "--ema-decay", "2"], "--ema-decay must be below 1, not 2.0"),
])
def test_numeric_settings_out_of_range(args, message, inputs, seg_run, capsys):
    command, *extra = args
    out = inputs["root"] / "out"
    base = [str(seg_run) if a == "RUN" else a for a in commands(inputs, str(out))[command]]
    assert message in run_bad(base + extra, capsys)
    assert not out.exists()


@pytest.mark.parametrize("size, message", [("0", "--size must be at least 8, not 0"), ("3", "--size must be at least 8")])
def test_match_sizes_out_of_range(size, message, inputs, capsys):
    out = inputs["root"] / "m.png"
    assert message in run_bad(["match", inputs["a"], inputs["b"], "--model", inputs["unet"], "--size", size,
                               "--out", str(out)], capsys)
    assert not out.exists()


def test_sweep_over_a_feature_folder_honours_or_refuses_t_and_blocks(inputs, capsys):
    feats = inputs["root"] / "feats"
    assert main(["features", "--model", inputs["unet"], "--data", inputs["digits"], "--blocks", "mid_block,up_blocks.0",
                 "--t", "10,50", "--out", str(feats)]) == 0
    sweep = ["sweep", "--model", inputs["unet"], "--data", inputs["digits"], "--features", str(feats), "--epochs", "1",
             "--augment", "0", "--shortlist", "0"]
    assert main(sweep + ["--t", "50", "--blocks", "mid_block", "--out", str(inputs["root"] / "s")]) == 0
    result = json.loads((inputs["root"] / "s" / "sweep.json").read_text())
    assert result["ts"] == [50] and result["blocks"] == ["mid_block"]
    message = run_bad(sweep + ["--t", "25", "--out", str(inputs["root"] / "s2")], capsys)
    assert "holds t [10, 50], not [25]" in message


def test_damaged_run_files_are_named(inputs, seg_run, tmp_path, capsys):
    heads = seg_run / "heads-diffusion.safetensors"
    good = heads.read_bytes()
    heads.write_bytes(good[:len(good) // 2])
    assert "heads file" in run_bad(["segment", "predict", "--run", str(seg_run), inputs["a"], "--out",
                                    str(tmp_path / "p")], capsys)
    heads.write_bytes(good)
    config = seg_run / "config.json"
    saved = config.read_text()
    config.write_text(saved[:40])
    assert "is damaged" in run_bad(["segment", "eval", "--run", str(seg_run), "--data", inputs["seg"]], capsys)
    config.write_text(saved)
    cache_json = next(seg_run.glob("cache/*/cache.json"))
    cache_json.write_text("{not json")
    assert main(["segment", "train", "--model", inputs["rgb"], "--data", inputs["seg"], "--out", str(seg_run),
                 "--k", "1", "--max-epochs", "1", "--pixels-per-image", "100", "--t", "50", "--no-baselines"]) == 0
    assert "is damaged; extracting the features again" in capsys.readouterr().out


def test_damaged_pretrain_checkpoint_is_named(inputs, tmp_path, capsys):
    run = tmp_path / "pre"
    assert main(["pretrain", "--data", "mnist", "--steps", "1", "--widths", "8,8", "--batch-size", "4",
                 "--out", str(run)]) == 0
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    message = run_bad(["pretrain", "--out", str(run), "--resume", "--steps", "2"], capsys)
    assert "checkpoint" in message and "is damaged" in message
    (run / "config.json").write_text("[1, 2")
    assert "is damaged" in run_bad(["pretrain", "--out", str(run), "--resume", "--steps", "2"], capsys)


def test_argument_text(inputs, capsys):
    out = inputs["root"] / "m.png"
    # a value starting with a minus is a value: the point is parsed and then found outside the image
    assert "outside the 44×40 image" in run_bad(["match", inputs["a"], inputs["b"], "--model", inputs["unet"],
                                                 "--points", "-5,10", "--out", str(out)], capsys)
    message = run_bad(["sweep", "--t", "5,x", "--out", str(inputs["root"] / "s")], capsys)
    assert "invalid comma-separated noise level" in message and "<lambda>" not in message
    message = run_bad(["sweep", "--pools", "1,two", "--out", str(inputs["root"] / "s")], capsys)
    assert "invalid comma-separated int value: '1,two'" in message


def test_segment_predict_pads_sizes_the_model_does_not_divide(inputs, seg_run, tmp_path, capsys):
    odd = tmp_path / "odd.png"
    Image.fromarray(np.full((37, 45, 3), 90, np.uint8)).save(odd)
    assert main(["segment", "predict", "--run", str(seg_run), str(odd), "--out", str(tmp_path / "p")]) == 0
    assert Image.open(tmp_path / "p" / "odd-labels.png").size == (45, 37)


def test_scoring_a_folder_without_splits_warns_that_it_may_be_the_training_images(inputs, seg_run, tmp_path, capsys):
    whole = write_folder(tmp_path / "whole", 2)
    assert main(["segment", "eval", "--run", str(seg_run), "--data", str(whole), "--out", str(tmp_path / "e"),
                 "--no-baselines"]) == 0
    assert "scores the training images" in capsys.readouterr().out


MODEL_COMMANDS = ["features", "sweep", "classify", "segment train", "match-eval", "match-sweep", "pretrain"]


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_takes_device_and_precision_and_refuses_what_cannot_run(command, inputs, capsys):
    import torch

    out = inputs["root"] / "out"
    base = commands(inputs, str(out))[command]
    assert "unknown device 'tpu'" in run_bad(base + ["--device", "tpu"], capsys)
    assert "fp16 on the CPU is refused" in run_bad(base + ["--device", "cpu", "--precision", "fp16"], capsys)
    assert "--precision must be one of" in run_bad(base + ["--precision", "fp64"], capsys)
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in run_bad(base + ["--device", "cuda"], capsys)
    assert not out.exists()


def test_bf16_is_the_short_form_of_precision_bf16(inputs, capsys):
    out = inputs["root"] / "f"
    assert main(commands(inputs, str(out))["features"] + ["--bf16", "--device", "cpu"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["precision"] == "bf16" and config["device"] == "cpu"
    assert "no CUDA GPU" in run_bad(["info", "--model", inputs["unet"], "--device", "cuda"], capsys) or \
        __import__("torch").cuda.is_available()


def test_every_command_that_runs_a_model_shows_device_and_precision_in_its_help():
    from diffrep.cli import build_parser

    parser = build_parser()
    names = ["info", "features", "sweep", "classify", "pretrain", "match", "match-eval", "match-sweep", "segment train",
             "segment predict", "segment eval"]
    for name in names:
        sub = parser
        for word in name.split():
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        text = sub.format_help()
        assert "--device" in text and "--precision" in text, name
