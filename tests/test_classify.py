"""GDC heads and DifFormer's fusion (`diffrep.heads.classifier`), and `diffrep classify` end to end."""

from __future__ import annotations

import json

import pytest
import torch

from diffrep.cli import main
from diffrep.features import FeatureStore, as_tensor
from diffrep.heads.classifier import FusionHead, make_head


def test_pooled_heads_pool_to_p_and_the_mlp_has_one_hidden_layer():
    x = [torch.randn(3, 16, 8, 8)]
    linear, mlp = make_head("linear", [(16, 8, 8)], 1, 10, pool=2), make_head("mlp", [(16, 8, 8)], 1, 10, pool=4)
    assert linear(x).shape == (3, 10) and linear.layers.in_features == 16 * 2 * 2
    assert [type(m).__name__ for m in mlp.layers] == ["Linear", "ReLU", "Linear"]
    assert mlp.layers[0].in_features == 16 * 4 * 4
    assert not any(p.requires_grad for p in linear.norm.parameters())   # normalised without learned parameters


def test_attention_head_tokens_cls_and_pooling_to_at_most_16():
    head = make_head("attention", [(8, 32, 32)], 1, 5, width=16)
    assert isinstance(head, FusionHead) and torch.equal(head.cls, torch.zeros(1, 1, 16))
    assert head.sides == [(16, 16)]                                 # 32×32 pooled to 16×16 tokens
    seen = {}
    head.transformer.register_forward_hook(lambda m, i, o: seen.update(tokens=i[0].shape))
    assert head([torch.randn(2, 8, 32, 32)]).shape == (2, 5)
    assert seen["tokens"] == (2, 1 + 256, 16)                       # CLS + 16² tokens
    assert head.positions[0].shape == (1, 256, 16)                  # a learned embedding per position
    plain = make_head("attention", [(8, 32, 32)], 1, 5, width=16, positions=False)
    assert plain.positions is None and plain.no_weight_decay() == [plain.cls]   # the reference's: none
    assert make_head("attention", [(8, 4, 4)], 1, 5, width=16, dropout=0.1).transformer.layers[0].dropout.p == 0.1
    layer = head.transformer.layers[0]
    assert layer.norm_first and layer.self_attn.num_heads == 8 and layer.linear1.out_features == 4 * 16


def test_fusion_shares_one_transformer_over_levels_and_concatenates_their_cls():
    head = make_head("fusion", [(8, 4, 4), (6, 8, 8)], 3, 10, width=16)
    maps = [torch.randn(2, 8, 4, 4), torch.randn(2, 6, 8, 8)] * 3   # level by level
    calls = []
    head.transformer.register_forward_hook(lambda m, i, o: calls.append(i[0].shape) and None)
    assert head(maps).shape == (2, 10)
    assert calls == [(2, 1 + 16 + 64, 16)] * 3 and head.classify.in_features == 3 * 16
    with pytest.raises(ValueError, match="expected 3×2 maps"):
        head(maps[:4])
    with pytest.raises(ValueError, match="reads one map"):
        make_head("linear", [(8, 4, 4), (6, 8, 8)], 1, 10)


def test_classify_end_to_end_with_baselines(unet_dir, labelled_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["classify", "--model", str(unet_dir), "--data", str(labelled_folder), "--heads", "linear,cnn,attention,fusion",
            "--blocks", "mid_block,up_blocks.0", "--t", "25,100", "--pools", "1,2", "--epochs", "2", "--width", "16",
            "--batch-size", "16", "--lr", "1e-3,1e-2", "--weight-decay", "0.05", "--seeds", "0,1", "--out", str(out)]
    assert main(args) == 0
    result = json.loads((out / "classify.json").read_text())
    rows = {(r["source"], r["head"]): r for r in result["heads"]}
    for source in ("diffusion", "random_weights"):
        assert {h for s, h in rows if s == source} == {"linear 1×1", "linear 2×2", "cnn", "attention", "fusion"}
    assert ("pixels", "fusion") not in rows and ("pixels", "cnn") in rows   # the CNN on pixels: trained from scratch
    assert [(c["t"], c["block"]) for c in rows[("diffusion", "fusion")]["cells"]] == \
        [(25, "mid_block"), (25, "up_blocks.0"), (100, "mid_block"), (100, "up_blocks.0")]
    assert [(c["t"], c["block"]) for c in rows[("diffusion", "attention")]["cells"]] == [(25, "mid_block")]
    for r in result["heads"]:                                        # each head: a grid of 2, then seed 1 again
        assert len(r["accuracies"]) == 2 and r["seeds"] == [0, 1] and r["parameters"] > 0
        assert r["accuracy"] == pytest.approx(sum(r["accuracies"]) / 2) and r["accuracy_sd"] >= 0
        assert [g["lr"] for g in r["grid"]] == [1e-3, 1e-2] and r["recipe"]["lr"] in (1e-3, 1e-2)
        assert r["recipe"]["optimizer"] == "adamw" and all(1 <= e <= 2 for e in r["best_epochs"])
        best = max(r["grid"], key=lambda g: (g["val_accuracy"], -g["val_loss"]))
        assert r["recipe"]["lr"] == best["lr"] and r["val_accuracies"][0] == best["val_accuracy"]
    assert rows[("pixels", "cnn")]["from_scratch"] and not rows[("diffusion", "cnn")]["from_scratch"]
    assert rows[("pixels", "cnn")]["parameters"] != rows[("diffusion", "cnn")]["parameters"]
    compared = {(c["a"], c["b"]): c for c in result["comparisons"]}
    assert ("diffusion attention", "pixels cnn (from scratch)") in compared
    assert ("diffusion fusion", "diffusion attention") in compared
    for c in compared.values():
        assert c["verdict"] in ("better", "worse", "tie")
        assert (c["verdict"] == "tie") == (abs(c["difference"]) <= c["margin"])
    assert (out / "classify.png").stat().st_size > 0 and not (out / "classify.partial.json").exists()
    printed = capsys.readouterr().out
    assert "linear 2×2" in printed and "random_weights" in printed and "±" in printed and "comparisons" in printed
    assert main(args) == 0                                           # again, from the cached maps: the same table
    again = json.loads((out / "classify.json").read_text())["heads"]
    assert [(r["head"], r["accuracies"], r["best_epochs"]) for r in again] == \
        [(r["head"], r["accuracies"], r["best_epochs"]) for r in result["heads"]]


@pytest.mark.parametrize("args, message", [
    (["--heads", "transformer"], "--heads must be one of"),
    (["--pools", "0"], "--pools must be at least 1"),
    (["--blocks", "nope"], "nope"),
    (["--seeds", "0,1,0"], "--seeds lists a seed twice"),
    (["--lr", "0"], "--lr must be above 0"),
    (["--optimizer", "adam"], "--optimizer must be one of"),
])
def test_classify_bad_settings_are_refused_in_one_line(unet_dir, labelled_folder, tmp_path, capsys, args, message):
    code = main(["classify", "--model", str(unet_dir), "--data", str(labelled_folder), *args, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_the_feedback_row_trains_adapters_and_head_live(unet_dir, labelled_folder, tmp_path):
    out = tmp_path / "fb"
    assert main(["classify", "--model", str(unet_dir), "--data", str(labelled_folder), "--heads", "feedback",
                 "--blocks", "mid_block", "--t", "25", "--epochs", "2", "--width", "16", "--train-batch", "8",
                 "--batch-size", "16", "--no-baselines", "--lr", "1e-3", "--out", str(out)]) == 0
    (row,) = json.loads((out / "classify.json").read_text())["heads"]
    assert row["head"] == "feedback" and row["fed_back"] == {"up_blocks.0": "down_blocks.1", "up_blocks.1": "down_blocks.0"}
    assert 0 <= row["accuracy"] <= 1 and 1 <= row["best_epochs"][0] <= 2 and row["parameters"] > 0
    assert row["recipe"]["lr"] == 1e-3 and len(row["grid"]) == 1          # no attention head ran: its grid, here one point


def test_feedback_on_a_dit_is_refused_before_any_work(dit_dir, labelled_folder, tmp_path, capsys):
    code = main(["classify", "--model", str(dit_dir), "--data", str(labelled_folder), "--heads", "feedback",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "DifFeed needs an encoder-decoder UNet" in err and not (tmp_path / "r" / "cache").exists()


def test_distorted_copies_add_fit_rows_only_and_are_cached_once(unet_dir, labelled_folder, tmp_path):
    from diffrep.classify.rows import with_copies
    train, copy = {"k": torch.zeros(10, 2)}, {"k": torch.ones(10, 2)}
    fit, val = torch.tensor([0, 2, 4, 6, 8]), torch.tensor([1, 3, 5, 7, 9])
    joined, rows = with_copies(train, [copy], fit, 10)
    assert joined["k"].shape == (20, 2) and torch.equal(joined["k"][torch.tensor([9, 10])], torch.tensor([[0., 0], [1, 1]]))
    assert torch.equal(rows, torch.tensor([0, 2, 4, 6, 8, 10, 12, 14, 16, 18]))
    assert not set(rows.tolist()) & set((val + 10).tolist())       # the validation images' copies stay out
    out = tmp_path / "aug"
    assert main(["classify", "--model", str(unet_dir), "--data", str(labelled_folder), "--heads", "linear",
                 "--pools", "2", "--blocks", "mid_block", "--t", "25", "--epochs", "1", "--augment", "2", "--lr", "1e-2",
                 "--rotate", "5", "--no-baselines", "--out", str(out)]) == 0
    result = json.loads((out / "classify.json").read_text())
    assert result["augment"]["copies"] == 2 and result["augment"]["distortion"]["rotate"] == 5
    a, b = (FeatureStore(out / "cache" / f"train-diffusion-copy{c}") for c in (0, 1))
    c0, c1 = (as_tensor(s.array(s.keys[0])) for s in (a, b))
    plain = FeatureStore(out / "cache" / "train-diffusion")
    assert c0.shape == c1.shape == as_tensor(plain.array(plain.keys[0])).shape and not torch.equal(c0, c1)


def test_label_subsets_take_k_per_class_the_same_for_every_call():
    from diffrep.classify.rows import labels_subset
    labels = torch.arange(30) % 3
    rows = torch.arange(24)                                          # the last 6 are held out
    a = labels_subset(labels, rows, 2, seed=0)
    assert torch.equal(a, labels_subset(labels, rows, 2, seed=0)) and len(a) == 6
    assert labels[a].bincount().tolist() == [2, 2, 2] and int(a.max()) < 24
    assert not torch.equal(a, labels_subset(labels, rows, 2, seed=1))
    assert len(labels_subset(labels, rows, 100, seed=0)) == 24       # a class with fewer: all of it


def test_pixel_patches_are_space_to_depth_on_the_token_grid():
    from diffrep.features import PixelPatches
    x = torch.randn(2, 3, 32, 32)
    m = PixelPatches(4, 3).maps(x)["pixels"]
    assert m.shape == (2, 48, 8, 8) and torch.equal(torch.nn.functional.pixel_shuffle(m, 4), x)
    assert PixelPatches(4, 3).maps(torch.randn(1, 3, 30, 30))["pixels"].shape == (1, 48, 7, 7)


def test_photo_crops_come_from_disjoint_tiles_and_are_balanced():
    from diffrep.data import load
    from diffrep.data.photos import PHOTOS, split_tiles
    for name in PHOTOS:
        tiles = {s: set(split_tiles(name, s)) for s in ("train", "val", "test")}
        assert not (tiles["train"] & tiles["val"] or tiles["train"] & tiles["test"] or tiles["val"] & tiles["test"])
        assert sum(map(len, tiles.values())) == 16
    val = load("photo-crops", "val")
    assert val.images.shape == (480, 3, 32, 32) and val.labels.bincount().tolist() == [30] * 16
    assert val.classes == list(PHOTOS) and float(val.images.min()) >= -1.001 and float(val.images.max()) <= 1.001


def _split_folder(root, per_split=(24, 8, 8)):
    """A class folder with train/ val/ test/ sub-folders of real digits."""
    from PIL import Image

    from diffrep.data import mnist
    data, start = mnist("train"), 0
    for split, n in zip(("train", "val", "test"), per_split):
        for i in range(start, start + n):
            folder = root / split / str(int(data.labels[i]) % 2)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(((data.images[i, 0] + 1) * 127.5).round().byte().numpy()).save(folder / f"{i:03d}.png")
        start += n
    return root


def test_label_efficiency_rows_plot_and_the_data_sets_own_val_split(unet_dir, tmp_path, capsys):
    data, out = _split_folder(tmp_path / "digits"), tmp_path / "run"
    assert main(["classify", "--model", str(unet_dir), "--data", str(data), "--heads", "linear,cnn", "--pools", "2",
                 "--blocks", "mid_block", "--t", "25", "--epochs", "2", "--labels-per-class", "1,3,all",
                 "--max-side", "8", "--batch-size", "16", "--lr", "1e-3,1e-2", "--weight-decay", "0.05",
                 "--out", str(out)]) == 0
    result = json.loads((out / "classify.json").read_text())
    assert result["n_val"] == 8 and "val split" in result["selection"]
    few = [r for r in result["label_efficiency"] if r["labels_per_class"] != "all"]
    assert {(r["source"], r["head"], r["labels_per_class"]) for r in few} == \
        {(s, h, k) for s in ("diffusion", "pixels", "random_weights") for h in ("linear 2×2", "cnn") for k in (1, 3)}
    chosen = {(r["source"], r["head"]): r["recipe"] for r in result["heads"]}
    for r in few:                                                       # the recipe chosen on all labels, no grid
        assert r["n_fit"] == 2 * r["labels_per_class"] and r["val_accuracy"] is None and r["best_epochs"] == [2]
        assert r["recipe"] == chosen[(r["source"], r["head"])] and len(r["grid"]) == 1
    assert all(r["n_fit"] == 24 and r["val_accuracy"] is not None for r in result["heads"])
    store = FeatureStore(out / "cache" / "train-diffusion")
    assert as_tensor(store.array(store.keys[0])).shape[-2:] == (8, 8)   # the test UNet's 16² mid_block, pooled
    assert result["pixel_patches"] == 4                                 # pixels on that 8×8 grid: 4×4 patches
    assert (out / "classify-labels.png").stat().st_size > 0
    assert "labelled images per class" in capsys.readouterr().out


def test_labels_per_class_must_be_positive(unet_dir, labelled_folder, tmp_path, capsys):
    code = main(["classify", "--model", str(unet_dir), "--data", str(labelled_folder), "--labels-per-class", "0,5",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--labels-per-class takes positive counts" in err and not (tmp_path / "r").exists()


def test_a_run_stopped_half_way_keeps_the_rows_it_finished(unet_dir, labelled_folder, tmp_path, monkeypatch):
    import diffrep.classify.gdc as gdc
    real = gdc.train_table

    def stop_after_first_random_row(cfg, source_name, *args, on_row=None, **kwargs):
        def save_then_stop(row):
            on_row(row)
            raise KeyboardInterrupt   # as a time limit would stop it, inside the random-weight source
        return real(cfg, source_name, *args, on_row=save_then_stop if source_name == "random_weights" else on_row,
                    **kwargs)
    monkeypatch.setattr(gdc, "train_table", stop_after_first_random_row)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        main(["classify", "--model", str(unet_dir), "--data", str(labelled_folder), "--heads", "linear,mlp",
              "--pools", "2", "--blocks", "mid_block", "--t", "25", "--epochs", "1", "--lr", "1e-2",
              "--weight-decay", "0", "--out", str(out)])
    partial = json.loads((out / "classify.partial.json").read_text())
    # diffusion and pixels finished; of random weights, the linear row finished before the run stopped
    assert partial["sources_done"] == ["diffusion", "pixels"]
    assert [(r["source"], r["head"]) for r in partial["heads"]] == [
        ("diffusion", "linear 2×2"), ("diffusion", "mlp 2×2"), ("pixels", "linear 2×2"), ("pixels", "mlp 2×2"),
        ("random_weights", "linear 2×2")]
    assert not (out / "classify.json").exists()


def _row(source, head, kind, accuracies, val, labels="all"):
    return {"source": source, "head": head, "kind": kind, "pool": None, "accuracies": accuracies, "val_accuracy": val,
            "labels_per_class": labels, "accuracy": sum(accuracies) / len(accuracies)}


def test_fusion_and_feedback_are_compared_with_gdc_best_head_on_val():
    from diffrep.classify.report import comparisons
    rows = [_row("diffusion", "linear 4×4", "linear", [0.90, 0.91], 0.95),
            _row("diffusion", "mlp 4×4", "mlp", [0.93, 0.93], 0.99),        # GDC's best on val
            _row("diffusion", "attention", "attention", [0.95, 0.96], 0.97),  # best on test, not on val
            _row("diffusion", "fusion", "fusion", [0.94, 0.94], 0.98),
            _row("diffusion", "feedback", "feedback", [0.92, 0.92], 0.97)]
    compared = {(c["a"], c["b"]): c["verdict"] for c in comparisons(rows)}
    assert compared[("diffusion fusion", "diffusion mlp 4×4")] == "better"
    assert compared[("diffusion feedback", "diffusion mlp 4×4")] == "worse"
    assert compared[("diffusion fusion", "diffusion attention")] == "worse"
    rows[2]["val_accuracy"] = 0.995   # attention best on val: compared once, not twice
    pairs = [(c["a"], c["b"]) for c in comparisons(rows)]
    assert pairs.count(("diffusion fusion", "diffusion attention")) == 1
    assert ("diffusion fusion", "diffusion mlp 4×4") not in pairs


def test_join_results_merges_runs_and_refuses_different_experiments():
    from diffrep.classify.report import join_results
    head = {"model": "m", "data": "d", "n_train": 10, "n_val": 2, "n_test": 5, "classes": ["a", "b"], "seeds": [0, 1]}
    a = {**head, "heads": [_row("diffusion", "linear 4×4", "linear", [0.90, 0.91], 0.95),
                           _row("diffusion", "attention", "attention", [0.95, 0.96], 0.97)]}
    b = {**head, "sources_done": [], "heads": [_row("diffusion", "attention", "attention", [0.95, 0.96], 0.97),
                                              _row("diffusion", "fusion", "fusion", [0.97, 0.98], 0.98)]}
    joined = join_results([a, b], ["a.json", "b.json"])
    assert [r["head"] for r in joined["heads"]] == ["linear 4×4", "attention", "fusion"]
    c = {**head, "heads": [_row("diffusion", "mlp 2×2", "mlp", [0.9, 0.9], 0.9)]}
    assert [r["head"] for r in join_results([b, c, a], ["b", "c", "a"])["heads"]] == \
        ["linear 4×4", "mlp 2×2", "attention", "fusion"]   # ordered as one run would order them
    assert ("diffusion fusion", "diffusion attention") in {(c["a"], c["b"]) for c in joined["comparisons"]}
    assert joined["joined_from"] == ["a.json", "b.json"] and "sources_done" not in joined
    with pytest.raises(ValueError, match="differs from a.json in seeds"):
        join_results([a, {**b, "seeds": [0]}], ["a.json", "b.json"])
    b["heads"][0] = _row("diffusion", "attention", "attention", [0.95, 0.90], 0.97)
    with pytest.raises(ValueError, match="different scores"):
        join_results([a, b], ["a.json", "b.json"])
