"""Real scale: noise seeded per image, streamed folders, the sharded feature store (resume after
SIGKILL, damaged shards, settings that differ), two processes against one, probes from memory-mapped
shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from diffrep import DiffusionFeatures, Featurizer, load_backbone
from diffrep.cli import main
from diffrep.core import image_noise
from diffrep.data import ImageBatches, ImageFiles, image_folder, load
from diffrep.features import Cell, FeatureStore, ShardedArray, ShardWriter, collect_features, in_memory
from diffrep.heads import train_probe_grid

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _features_cmd(model, data, out, *extra):
    return ["features", "--model", str(model), "--data", str(data), "--blocks", "mid_block,up_blocks.0",
            "--t", "5,25", "--splits", "train", "--out", str(out), *extra]


def _arrays(folder) -> dict:
    store = FeatureStore(folder)
    return {k: store.array(k).materialise() for k in store.keys}


# ----------------------------------------------------------------------------- noise per image

def test_noise_is_bit_identical_at_batch_sizes_50_and_64():
    shape, t = (1, 8, 8), 25
    whole = image_noise(3, range(128), 2, t, shape)
    for size in (50, 64):
        parts = torch.cat([image_noise(3, range(s, min(s + size, 128)), 2, t, shape) for s in range(0, 128, size)], 1)
        assert torch.equal(parts, whole)
    assert not torch.equal(image_noise(3, [0], 1, t, shape), image_noise(3, [1], 1, t, shape))   # images differ
    assert not torch.equal(image_noise(3, [0], 1, 25, shape), image_noise(3, [0], 1, 50, shape))   # levels differ
    assert not torch.equal(image_noise(3, [0], 1, t, shape), image_noise(4, [0], 1, t, shape))     # seeds differ


def test_features_agree_at_batch_sizes_50_and_64(unet_dir):
    featurizer = Featurizer(load_backbone(unet_dir, "cpu"))
    source = DiffusionFeatures(featurizer, ["mid_block", "up_blocks.0"], [5, 50], ensemble=2, seed=1)
    images = load("mnist", "test").images[:128]
    a = collect_features(source, images, [1, 2], batch_size=50)
    b = collect_features(source, images, [1, 2], batch_size=64)
    assert set(a) == set(b) and len(a) == 2 * 2 * 2
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4)
    # one image alone gets the noise it gets in the batch, given its index
    alone = source.maps(images[70:71], indices=[70])
    full = source.maps(images[64:128], indices=range(64, 128))
    for k in alone:
        torch.testing.assert_close(alone[k][0], full[k][6], rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- streamed folders

def test_a_folder_is_read_lazily_and_streamed_through_a_dataloader(labelled_folder):
    data = image_folder(labelled_folder, channels=1, size=32)
    assert isinstance(data.images, ImageFiles) and data.images.shape == (40, 1, 32, 32)
    part = data.subset(torch.tensor([3, 5]))
    assert isinstance(part.images, ImageFiles) and len(part) == 2 and part.labels.tolist() == data.labels[[3, 5]].tolist()
    seen = torch.cat([idx for idx, _ in ImageBatches(data.images, 16, workers=0)])
    assert seen.tolist() == list(range(40))
    by_workers = torch.cat([b for _, b in ImageBatches(data.images, 16, workers=2)])
    torch.testing.assert_close(by_workers, data.images.stack(), rtol=0, atol=0)


def test_an_unreadable_file_found_while_streaming_is_one_line(labelled_folder, tmp_path, capsys, unet_dir):
    import shutil

    folder = tmp_path / "digits"
    shutil.copytree(labelled_folder, folder)
    (folder / "3" / "broken.png").write_bytes(b"not a png")
    code = main(_features_cmd(unet_dir, folder, tmp_path / "f", "--workers", "1", "--t", "5"))
    err = capsys.readouterr().err
    message = [line for line in err.splitlines() if line.startswith("diffrep")]
    assert code == 2 and "Traceback" not in err and len(message) == 1
    assert "cannot read image" in message[0] and "broken.png" in message[0]


def test_negative_workers_are_refused(unet_dir, labelled_folder, tmp_path, capsys):
    assert main(_features_cmd(unet_dir, labelled_folder, tmp_path / "f", "--workers", "-1")) == 2
    assert "--workers must be at least 0" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


# ----------------------------------------------------------------------------- the sharded store

def test_store_reuses_resumes_and_recomputes_damaged_shards(unet_dir, labelled_folder, tmp_path, capsys):
    out = tmp_path / "f"
    cmd = _features_cmd(unet_dir, labelled_folder, out, "--shard-size", "8", "--batch-size", "3")
    assert main(cmd) == 0
    store = FeatureStore(out / "train")
    assert store.n == 32 and len(store.manifest["shards"]) == 4 and store.array("labels").shape == (32,)
    first = _arrays(out / "train")
    capsys.readouterr()
    shards = sorted((out / "train").glob("shard-*.safetensors"))
    shards[1].write_bytes(shards[1].read_bytes()[:500])             # truncated
    raw = bytearray(shards[2].read_bytes())
    raw[-10] ^= 0xFF                                                  # one byte of the features changed
    shards[2].write_bytes(bytes(raw))
    shards[3].unlink()                                                # missing
    assert main(cmd) == 0
    printed = capsys.readouterr().out
    assert "shard-00001.safetensors is unreadable" in printed
    assert "shard-00002.safetensors is damaged: its contents do not match their checksum" in printed
    assert "1 of 4 shard(s) complete" in printed
    again = _arrays(out / "train")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert main(cmd) == 0 and "reusing cached features" in capsys.readouterr().out


@pytest.mark.parametrize("change, setting", [
    (["--t", "5,50"], "identity.ts ([5, 25] there, [5, 50] now)"),
    (["--seed", "3"], "identity.seed (0 there, 3 now)"),
    (["--blocks", "mid_block"], "identity.blocks"),
    (["--shard-size", "16"], "shard_size (8 there, 16 now)"),
])
def test_a_store_written_with_other_settings_is_refused(unet_dir, labelled_folder, tmp_path, capsys, change, setting):
    out = tmp_path / "f"
    assert main(_features_cmd(unet_dir, labelled_folder, out, "--shard-size", "8")) == 0
    before = {p.name: p.read_bytes() for p in (out / "train").iterdir()}
    capsys.readouterr()
    assert main(_features_cmd(unet_dir, labelled_folder, out, "--shard-size", "8", *change)) == 2
    err = capsys.readouterr().err
    assert "holds features made with other settings" in err and setting in err
    assert {p.name: p.read_bytes() for p in (out / "train").iterdir()} == before   # nothing touched


def test_sigkill_then_the_same_command_resumes_and_equals_an_uninterrupted_run(unet_dir, labelled_folder, tmp_path):
    args = ["--shard-size", "4", "--batch-size", "2", "--ensemble", "16", "--t", "5,25,50"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    cmd = [sys.executable, "-m", "diffrep.cli", *_features_cmd(unet_dir, labelled_folder, killed, *args)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list((killed / "train").glob("shard-*.safetensors")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "train" / "manifest.json").exists(), "the run ended before it could be killed"
    assert (killed / "train" / "store.json").is_file()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout
    assert main(_features_cmd(unet_dir, labelled_folder, whole, *args)) == 0
    a, b = _arrays(killed / "train"), _arrays(whole / "train")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_give_the_features_of_one(unet_dir, labelled_folder, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--shard-size", "8", "--batch-size", "5", "--ensemble", "2"]
    assert main(_features_cmd(unet_dir, labelled_folder, one, *args)) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "diffrep.cli", *_features_cmd(unet_dir, labelled_folder, two, *args)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((two / "features.json").read_text())["processes"] == 2
    a, b = _arrays(one / "train"), _arrays(two / "train")
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- heads from the store

def test_sharded_array_reads_the_rows_asked_for(tmp_path):
    x = torch.randn(23, 3, 2)
    writer = ShardWriter(tmp_path / "s", {"what": "test"}, 23, 5)
    writer.open(main=True)
    for s in writer.todo():
        writer.write(s, {"x": x[writer.range(s).start:writer.range(s).stop]})
    writer.finish()
    array = FeatureStore(tmp_path / "s").array("x")
    assert isinstance(array, ShardedArray) and array.shape == (23, 3, 2)
    index = torch.tensor([22, 0, 7, 7, 14])
    assert torch.equal(array[index], x[index]) and torch.equal(array[3:12], x[3:12]) and torch.equal(array.materialise(), x)


def test_probes_from_memory_mapped_shards_equal_probes_from_memory(tmp_path):
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (90,), generator=gen)
    feats = {Cell(5, "b", 1): torch.randn(90, 6, generator=gen) + y[:, None], Cell(5, "b", 2): torch.randn(90, 4, 2, 2, generator=gen)}
    writer = ShardWriter(tmp_path / "s", {"what": "probe"}, 90, 16)
    writer.open(main=True)
    for s in writer.todo():
        r = writer.range(s)
        writer.write(s, {k: v[r.start:r.stop] for k, v in feats.items()})
    writer.finish()
    store = FeatureStore(tmp_path / "s")
    mapped = in_memory({k: store.array(k) for k in store.keys}, budget=0)   # too big for RAM: stays mapped
    assert all(isinstance(v, ShardedArray) for v in mapped.values())
    test = {k: v[:30] for k, v in feats.items()}
    a = train_probe_grid(feats, y, test, y[:30], epochs=5, batch_size=16)
    b = train_probe_grid(mapped, y, test, y[:30], epochs=5, batch_size=16)
    assert a == b and a[Cell(5, "b", 1)]["accuracy"] > 0.5


def test_a_sweep_on_two_processes_scores_what_one_process_does(unet_dir, labelled_folder, tmp_path):
    args = ["sweep", "--model", str(unet_dir), "--data", str(labelled_folder), "--t", "5", "--pools", "1",
            "--blocks", "mid_block,up_blocks.0", "--epochs", "3", "--augment", "0", "--shortlist", "0",
            "--batch-size", "4"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "diffrep.cli", *args, "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / r / "sweep.json").read_text()) for r in ("one", "two"))
    assert len(one["cells"]) == 2
    for a, b in zip(one["cells"], two["cells"]):
        assert (a["t"], a["block"]) == (b["t"], b["block"]) and abs(a["accuracy"] - b["accuracy"]) <= 1 / 8
