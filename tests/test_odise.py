"""ODISE parts: the vocabulary, the Mask2Former mask generator on arbitrary maps, the text classifier."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from diffrep import DiffrepError
from diffrep.data.coco_panoptic import PanopticSet
from diffrep.segment.odise.mask_generator import (ClosedSetClassifier, GeneratorConfig, MaskGenerator, PanopticLoss,
                                                  TextClassifier, mask_pool)
from diffrep.segment.odise.vocab import Vocabulary

STRIDES = [1, 2, 4, 8]


def test_vocab_parses_synonyms_and_stuff_and_refuses_empty_or_repeated_names():
    v = Vocabulary.parse("three,digit 3; stuff:grass,lawn")
    assert [c.names for c in v.categories] == [("three", "digit 3"), ("grass", "lawn")]
    assert [c.isthing for c in v.categories] == [True, False] and v.ids == [1, 2]
    with pytest.raises(DiffrepError, match="has an empty name"):
        Vocabulary.parse("three,;grass")
    with pytest.raises(DiffrepError, match="has an empty name"):
        Vocabulary.parse("three;;grass")
    with pytest.raises(DiffrepError, match="names 'Grass' twice"):
        Vocabulary.parse("grass;lawn,Grass")
    with pytest.raises(DiffrepError, match="not in the vocabulary"):
        v.index_of(7)


def _maps(batch=2, side=32):
    torch.manual_seed(0)
    return [torch.randn(batch, c, side // s, side // s) for c, s in zip((8, 16, 16, 8), STRIDES)]


def test_generator_is_initialised_finite_and_gives_masks_and_unit_embeddings_per_layer():
    for seed in range(5):   # built alone, transformers leaves level_embed uninitialised: we initialise it
        torch.manual_seed(seed)
        g = MaskGenerator([8, 16, 16, 8], STRIDES, 12, GeneratorConfig(width=32, queries=5, decoder_layers=2), 3)
        assert torch.isfinite(g.pixel_decoder.level_embed).all() and g.pixel_decoder.level_embed.abs().max() < 10
    out = g(_maps())
    assert len(out["masks"]) == 3 and out["masks"][-1].shape == (2, 5, 32, 32)   # initial + 2 layers, finest stride
    assert torch.allclose(out["embeddings"][-1].norm(dim=-1), torch.ones(2, 5), atol=1e-5)


def test_text_classifier_takes_the_best_synonym_and_a_vocabulary_of_any_size():
    clf = TextClassifier(4)
    names = F.normalize(torch.eye(4)[:3], dim=-1)                  # three names, categories [0, 0, 1]
    owner = torch.tensor([0, 0, 1])
    query = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]])                # equal to name 1, a synonym of category 0
    logits = clf(query, names, owner)
    assert logits.shape == (1, 1, 3) and logits[0, 0].argmax() == 0
    more = clf(query, torch.eye(4), torch.arange(4))               # another vocabulary, same weights
    assert more.shape == (1, 1, 5) and more[0, 0].argmax() == 1


def test_mask_pool_averages_under_the_mask():
    feats = torch.arange(4.0).view(1, 1, 2, 2)
    logits = torch.tensor([[[[20.0, -20.0], [-20.0, -20.0]], [[-20.0, -20.0], [20.0, 20.0]]]])
    assert torch.allclose(mask_pool(feats, logits)[0, :, 0], torch.tensor([0.0, 2.5]), atol=1e-4)


def test_grid_mask_pool_keeps_the_layout_inside_the_mask_box():
    feats = torch.arange(36.0).view(1, 1, 6, 6)
    logits = torch.full((1, 1, 6, 6), -30.0)
    logits[0, 0, 1:4, 2:5] = 30.0                                  # a 3×3 box: one pixel per grid cell
    logits[0, 0, 2, 3] = -30.0                                     # its centre cell left empty
    cells = mask_pool(feats, logits, grid=3)[0, 0]
    assert cells.shape == (9,)
    expected = feats[0, 0, 1:4, 2:5].flatten().clone()
    expected[4] = 0.0
    assert torch.allclose(cells, expected, atol=1e-3)
    # two masks of the same average but mirrored layout: the plain average cannot tell them apart
    left, right = torch.full((2, 1, 1, 4, 4), -30.0)
    left[..., :, 0], right[..., :, 3] = 30.0, 30.0
    flat = torch.ones(1, 1, 4, 4) * torch.tensor([0.0, 1.0, 1.0, 0.0])
    flat[..., 0] = torch.arange(4.0)                               # the mask column's features vary down it
    flat[..., 3] = torch.arange(4.0).flip(0)
    pooled = [mask_pool(flat, m, grid) for m in (left, right) for grid in (1, 2)]
    assert torch.allclose(pooled[0], pooled[2]) and not torch.allclose(pooled[1], pooled[3])


@pytest.mark.parametrize("classifier", ["text", "closed"])
def test_a_few_steps_on_one_scene_lower_the_panoptic_loss(classifier):
    torch.manual_seed(0)
    g = MaskGenerator([8, 16, 16, 8], STRIDES, 12, GeneratorConfig(width=32, queries=6, decoder_layers=2, points=256), 3)
    names, owner = F.normalize(torch.randn(3, 12), dim=-1), torch.arange(3)
    clf = TextClassifier(12) if classifier == "text" else ClosedSetClassifier(12, 3)
    loss_fn = PanopticLoss(g)
    masks = torch.zeros(2, 32, 32)
    masks[0, :, :16], masks[1, :, 16:] = 1, 1
    labels = torch.tensor([0, 2])
    maps = _maps(1)
    opt = torch.optim.AdamW([*g.parameters(), *clf.parameters()], lr=1e-3)
    losses = []
    for _ in range(25):
        out = g(maps)
        total, parts = loss_fn(out["masks"], [clf(e, names, owner) for e in out["embeddings"]], [masks], [labels])
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert set(parts) == {"loss_cross_entropy", "loss_mask", "loss_dice"}
    assert losses[-1] < 0.7 * losses[0]


def test_teacher_forced_class_loss_reads_the_true_masks_and_trains_the_classifier():
    torch.manual_seed(0)
    g = MaskGenerator([8, 16, 16, 8], STRIDES, 12, GeneratorConfig(width=32, queries=6, decoder_layers=2, points=256), 3)
    names, owner = F.normalize(torch.randn(3, 12), dim=-1), torch.arange(3)
    clf = TextClassifier(12)
    loss_fn = PanopticLoss(g)
    masks = torch.zeros(2, 32, 32)
    masks[0, :, :16], masks[1, :, 16:] = 1, 1
    maps = _maps(1)
    out = g(maps)
    logits = [clf(e, names, owner) for e in out["embeddings"]]
    out["logits"] = logits
    loss = loss_fn.true_masks(g, lambda e: clf(e, names, owner), out, [masks], [torch.tensor([0, 2])])
    assert loss.ndim == 0 and loss > 0
    loss.backward()
    assert g.pool_proj[1].weight.grad.abs().sum() > 0 and clf.log_scale.grad is not None
    # the true masks, not the predicted ones, are pooled: swapping the labels of the two halves changes it
    out = g(maps)
    out["logits"] = [clf(e, names, owner) for e in out["embeddings"]]
    swapped = loss_fn.true_masks(g, lambda e: clf(e, names, owner), out, [masks.flip(0)], [torch.tensor([0, 2])])
    assert not torch.isclose(swapped, loss.detach())
    empty = loss_fn.true_masks(g, lambda e: clf(e, names, owner), out, [torch.zeros(0, 32, 32)],
                               [torch.zeros(0, dtype=torch.long)])
    assert float(empty) == 0.0


@pytest.fixture(scope="module")
def t2i_dir(tmp_path_factory):
    """A 4-level text-to-image UNet (pretrain --captions, 1 step) on 6 captioned scenes."""
    from diffrep.data.coco_panoptic import write_split
    from diffrep.data.panoptic_scenes import categories, scene
    from diffrep.pretrain import PretrainConfig, pretrain
    root = tmp_path_factory.mktemp("t2i")
    write_split(root / "data", "train", (scene("train", i) for i in range(6)), categories())
    pretrain(root / "run", PretrainConfig(data=str(root / "data"), captions=True, channels=3, resolution=16,
                                          widths=(8, 8, 16, 16), layers_per_block=1, batch_size=4, steps=1,
                                          precision="fp32", warmup=2))
    return root / "run" / "model"


def test_pyramid_reads_four_strides_and_the_captioner_starts_at_the_empty_prompt(t2i_dir):
    from diffrep import load_backbone
    from diffrep.core import Featurizer
    from diffrep.segment.odise.features import DiffusionPyramid
    featurizer = Featurizer(load_backbone(t2i_dir))
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    implicit, empty = DiffusionPyramid(featurizer, "implicit"), DiffusionPyramid(featurizer, "empty")
    assert implicit.strides == [1, 2, 4, 8] and [b.name for b in implicit.taps][0].startswith("up_blocks.")
    a, b = implicit(images), empty(images)
    assert [m.shape[-1] for m in a] == [16, 8, 4, 2]
    for x, y in zip(a, b):                                   # α = 0: exactly the empty prompt
        torch.testing.assert_close(x, y)
    oracle = DiffusionPyramid(featurizer, "caption")(images, ["a three on grass", "a seven on brick wall"])
    assert not torch.allclose(oracle[-1], b[-1])
    with torch.no_grad():
        implicit.captioner.time_gate.fill_(0.5)              # the time-embedding gate alone moves the maps
    timed = implicit(images)
    assert not torch.allclose(timed[0], b[0])
    assert not featurizer.model.time_embedding._forward_hooks   # the hook lives for one pass only
    torch.testing.assert_close(empty(images)[0], b[0])
    with torch.no_grad():
        implicit.captioner.gate.fill_(0.5)
    implicit(images)[0].sum().backward()                     # gradients reach the captioner, not the UNet
    assert implicit.captioner.proj.weight.grad.abs().sum() > 0
    assert implicit.captioner.time_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in featurizer.model.parameters())
    with pytest.raises(DiffrepError, match="needs a caption for every image"):
        DiffusionPyramid(featurizer, "caption")(images)


def test_skip_input_taps_read_the_decoder_state_joined_to_the_encoder_skip(t2i_dir):
    from diffrep import load_backbone
    from diffrep.core import Featurizer
    from diffrep.segment.odise.features import DiffusionPyramid
    featurizer = Featurizer(load_backbone(t2i_dir))
    model = featurizer.model
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    skip, outputs = DiffusionPyramid(featurizer, "empty"), DiffusionPyramid(featurizer, "empty", taps="block-outputs")
    assert [b.name for b in skip.taps] == [f"up_blocks.{i}.resnets.1" for i in (3, 2, 1, 0)]
    assert skip.channels == [model.up_blocks[i].resnets[1].in_channels for i in (3, 2, 1, 0)]
    assert [b.name for b in outputs.taps] == ["up_blocks.3", "up_blocks.1", "up_blocks.0", "mid_block"]
    maps = skip(images)
    assert [m.shape[1] for m in maps] == skip.channels and [m.shape[-1] for m in maps] == [16, 8, 4, 2]
    with torch.no_grad():   # the finest map ends with the encoder's first map (conv_in of the noised input)
        x_t = featurizer.noised(featurizer.backbone.encode(images), 0, 0, [0])
        first = model.conv_in(x_t)
    torch.testing.assert_close(maps[0][:, -first.shape[1]:], first)
    assert not torch.allclose(outputs(images)[0][:, :first.shape[1]], first)


def test_a_unet_with_fewer_than_four_strides_or_no_text_input_is_refused(unet_dir):
    from diffrep import load_backbone
    from diffrep.core import Featurizer
    from diffrep.segment.odise.features import DiffusionPyramid, pyramid_taps
    featurizer = Featurizer(load_backbone(unet_dir))
    with pytest.raises(DiffrepError, match="ODISE reads four strides"):
        pyramid_taps(featurizer)
    with pytest.raises(DiffrepError, match="'implicit' needs a text-conditional UNet.*use --conditioning empty"):
        DiffusionPyramid(featurizer, "implicit")


@pytest.fixture(scope="module")
def panoptic_folder(t2i_dir):
    from diffrep.data.coco_panoptic import write_split
    from diffrep.data.panoptic_scenes import categories, scene
    root = t2i_dir.parent.parent / "data"   # the t2i fixture's train split, plus val and test
    for split, n in (("val", 2), ("test", 2)):
        write_split(root, split, (scene(split, i) for i in range(n)), categories())
    return root


def test_train_eval_predict_end_to_end_with_held_out_categories(t2i_dir, panoptic_folder, tmp_path):
    from diffrep.cli import main
    run = tmp_path / "run"
    tiny = ["--width", "32", "--queries", "6", "--decoder-layers", "1", "--encoder-layers", "1", "--points", "64"]
    assert main(["panoptic", "train", "--model", str(t2i_dir), "--data", str(panoptic_folder), "--epochs", "1",
                 "--batch-size", "3", "--train-images", "3", "--val-images", "1", *tiny, "--out", str(run)]) == 0
    train = json.loads((run / "panoptic-train.json").read_text())
    assert sorted(train["held_out"]) == [9, 10, 13] and len(train["train_vocab"]) == 13   # eight, nine, gravel
    assert (run / "odise.safetensors").is_file() and (run / "panoptic-val.png").stat().st_size > 0
    assert main(["panoptic", "eval", "--run", str(run)]) == 0
    scores = json.loads((run / "panoptic-eval.json").read_text())
    assert scores["split"] == "test" and set(scores["summary"]) == {"all", "seen", "unseen", "things", "stuff"}
    assert all(0 <= r["pq"] <= 1 for r in scores["per_category"].values())
    assert scores["timing_s"]["total"] > 0
    assert main(["panoptic", "eval", "--run", str(run), "--split", "val", "--zero-shot", "--relative",
                 "--zero-shot-temperature", "10", "--out", str(tmp_path / "zs")]) == 0
    ensembled = json.loads((tmp_path / "zs" / "panoptic-eval.json").read_text())
    assert ensembled["zero_shot"] == {"alpha": 0.3, "beta": 0.7, "temperature": 10.0, "relative": True,
                                     "prompts": "photo"}
    image = panoptic_folder / "images" / "test" / "test-000000.png"
    out = tmp_path / "pred"
    assert main(["panoptic", "predict", "--run", str(run), str(image), "--vocab", "three,digit 3;stuff:sand",
                 "--out", str(out)]) == 0
    predicted = PanopticSet(out, "predicted")
    assert [c["name"] for c in predicted.categories] == ["three", "sand"] and len(predicted) == 1
    predicted.check_all()


def test_bad_vocabularies_and_held_out_names_fail_in_one_line_before_any_work(t2i_dir, panoptic_folder, tmp_path,
                                                                            capsys):
    from diffrep.cli import main
    assert main(["panoptic", "train", "--model", str(t2i_dir), "--data", str(panoptic_folder), "--held-out",
                 "seven,unicorn", "--out", str(tmp_path / "r")]) == 2
    assert "--held-out unicorn: no such category" in capsys.readouterr().err and not (tmp_path / "r").exists()
    for vocab, problem in (("three;;grass", "empty name"), ("grass;Grass", "names 'Grass' twice")):
        assert main(["panoptic", "predict", "--run", str(tmp_path), "x.png", "--vocab", vocab,
                     "--out", str(tmp_path / "p")]) == 2
        assert problem in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_ensemble_weights_move_between_classifier_and_zero_shot_scores():
    from diffrep.segment.odise.scorer import ensemble
    logits = torch.log(torch.tensor([[[0.6, 0.2, 0.2]]]))           # two classes + null (0.2)
    zero_shot = torch.tensor([[[-5.0, 5.0]]])                      # the scorer prefers class 1
    seen = torch.tensor([False, False])
    kept = ensemble(logits, zero_shot, seen, alpha=0.0).exp()
    assert torch.allclose(kept, torch.tensor([[[0.6, 0.2, 0.2]]]), atol=1e-5)   # α = 0: the classifier alone
    moved = ensemble(logits, zero_shot, torch.tensor([False, True]), alpha=0.0, beta=1.0).exp()
    assert moved[0, 0, 1] > moved[0, 0, 0] and torch.isclose(moved[0, 0, 2], torch.tensor(0.2))
    assert torch.isclose(moved.sum(), torch.tensor(1.0))


def test_zero_shot_scorer_prefers_the_category_whose_prompt_denoises_the_mask_best(t2i_dir):
    from diffrep import load_backbone
    from diffrep.segment.odise.scorer import DenoisingScorer, _best_synonym
    errors = torch.tensor([[3.0, 1.0], [2.0, 2.0], [0.5, 4.0]]).view(3, 1, 2, 1)      # 3 names, 2 pixels
    best = _best_synonym(errors, torch.tensor([0, 0, 1]), 2)        # names 0, 1 are synonyms of category 0
    assert torch.equal(best.flatten(), torch.tensor([2.0, 1.0, 0.5, 4.0]))
    scorer = DenoisingScorer(load_backbone(t2i_dir), Vocabulary.parse("three;stuff:grass;stuff:brick wall"), ts=(100,),
                             draws=1)
    err = scorer.errors(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert err.shape == (2, 3, 16, 16) and (err >= 0).all()
    fake = torch.stack([torch.full((16, 16), 1.0), torch.full((16, 16), 0.2), torch.full((16, 16), 0.6)])[None]
    logits = scorer.mask_logits(fake, torch.full((1, 1, 8, 8), 5.0))
    assert logits[0, 0].argmax() == 1


def test_caption_style_prompts_name_things_and_stuff_as_the_training_captions_do(t2i_dir):
    from diffrep import load_backbone
    from diffrep.segment.odise.scorer import DenoisingScorer, prompt_for
    assert [prompt_for(n, thing, "caption") for n, thing in [("eight", True), ("three", True), ("grass", False)]] \
        == ["an eight", "a three", "grass"]
    assert prompt_for("grass", False) == "a photo of grass."
    with pytest.raises(DiffrepError, match="unknown prompt style 'alt'"):
        prompt_for("grass", False, "alt")
    backbone, vocab = load_backbone(t2i_dir), Vocabulary.parse("eight;stuff:grass")
    caption = DenoisingScorer(backbone, vocab, prompts="caption").prompts
    torch.testing.assert_close(caption[0], backbone.condition(1, "an eight")[0])
    assert not torch.allclose(caption, DenoisingScorer(backbone, vocab).prompts)


def test_relative_zero_shot_scores_ignore_a_prompt_that_denoises_everywhere_better(t2i_dir):
    from diffrep import load_backbone
    from diffrep.segment.odise.scorer import DenoisingScorer
    vocab = Vocabulary.parse("three;eight")
    errors = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), 0.5)])[None]       # "eight": lower everywhere
    errors[0, 0, :2, :2] = 0.3          # "three" is the better prompt only on the top-left corner
    corner = torch.full((1, 1, 4, 4), -20.0)
    corner[..., :2, :2] = 20.0
    absolute = DenoisingScorer(load_backbone(t2i_dir), vocab, ts=(100,), draws=1)
    relative = DenoisingScorer(load_backbone(t2i_dir), vocab, ts=(100,), draws=1, relative=True)
    assert absolute.mask_logits(errors, corner)[0, 0].argmax() == 0    # 0.3 against 0.5: three
    whole = torch.full((1, 1, 4, 4), 20.0)
    assert absolute.mask_logits(errors, whole)[0, 0].argmax() == 1
    assert relative.mask_logits(errors, corner)[0, 0].argmax() == 0
    errors[0, 0, :2, :2] = 0.6          # now eight is lower on the corner too, but by less than elsewhere
    assert absolute.mask_logits(errors, corner)[0, 0].argmax() == 1
    assert relative.mask_logits(errors, corner)[0, 0].argmax() == 0


def test_fixed_features_are_cached_once_and_reused(panoptic_folder, tmp_path):
    from diffrep.cli import main
    run = tmp_path / "pixels"
    args = ["panoptic", "train", "--source", "pixels", "--data", str(panoptic_folder), "--epochs", "1", "--batch-size",
            "3", "--train-images", "3", "--val-images", "2", "--width", "32", "--queries", "4", "--decoder-layers", "1",
            "--encoder-layers", "1", "--points", "64", "--out", str(run)]
    assert main(args) == 0
    shards = sorted((run / "cache" / "pixels-train").glob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    first = json.loads((run / "panoptic-train.json").read_text())
    assert first["model"] == "pixels" and not (run / "cache" / "pixels-test").exists()
    assert main(args) == 0
    assert shards and [p.stat().st_mtime_ns for p in shards] == stamps   # read back, not computed again
    again = json.loads((run / "panoptic-train.json").read_text())
    assert again["val"]["summary"] == first["val"]["summary"]    # the same seed, the same features: the same run


def test_captioner_epochs_read_cached_empty_prompt_maps_until_the_captioner_trains(t2i_dir, panoptic_folder, tmp_path,
                                                                                   monkeypatch):
    from diffrep.cli import main
    from diffrep.segment.odise.features import DiffusionPyramid
    live = []
    forward = DiffusionPyramid.forward
    monkeypatch.setattr(DiffusionPyramid, "forward",
                        lambda self, *a, **k: live.append(self.captioner is not None) or forward(self, *a, **k))
    args = ["panoptic", "train", "--model", str(t2i_dir), "--data", str(panoptic_folder), "--epochs", "2",
            "--batch-size", "3", "--train-images", "3", "--val-images", "1", "--width", "32", "--queries", "4",
            "--decoder-layers", "1", "--encoder-layers", "1", "--points", "64"]
    assert main([*args, "--captioner-epochs", "1", "--out", str(tmp_path / "late")]) == 0
    assert (tmp_path / "late" / "cache" / "diffusion-empty-skip-inputs-train").is_dir()
    assert sum(live) == 3          # epoch 2's step and val pass, and the final val pass; epoch 1 read the cache
    live.clear()
    assert main([*args, "--captioner-epochs", "0", "--out", str(tmp_path / "all")]) == 0
    assert sum(live) == 5 and not (tmp_path / "all" / "cache").exists()
    assert main([*args, "--captioner-epochs", "3", "--out", str(tmp_path / "bad")]) == 2   # a usage error
    assert not (tmp_path / "bad").exists()


def test_baselines_train_in_the_same_run_and_eval_tables_them(t2i_dir, panoptic_folder, tmp_path):
    from diffrep.cli import main
    run = tmp_path / "run"
    assert main(["panoptic", "train", "--model", str(t2i_dir), "--data", str(panoptic_folder), "--baselines",
                 "--epochs", "1", "--batch-size", "3", "--train-images", "3", "--val-images", "1", "--width", "32",
                 "--queries", "4", "--decoder-layers", "1", "--encoder-layers", "1", "--points", "64",
                 "--out", str(run)]) == 0
    names = {"pixels", "random-weights", "empty-prompt", "oracle-caption", "closed-set"}
    assert set(json.loads((run / "panoptic-train.json").read_text())["baselines"]) == names
    assert main(["panoptic", "eval", "--run", str(run)]) == 0
    table = json.loads((run / "panoptic-eval.json").read_text())["table"]
    assert set(table) == names | {"odise"} and (run / "panoptic-table.png").stat().st_size > 0
    assert main(["panoptic", "eval", "--run", str(run), "--no-baselines", "--out", str(tmp_path / "alone")]) == 0
    assert "table" not in json.loads((tmp_path / "alone" / "panoptic-eval.json").read_text())
    assert not (tmp_path / "alone" / "baselines").exists()
    pixels = json.loads((run / "baselines" / "pixels" / "odise.json").read_text())["config"]
    side = json.loads((run / "panoptic-train.json").read_text())["image_side"]
    assert pixels["source"] == "pixels" and pixels["image_side"] == side > 0   # the image the UNet reads


def test_the_bundled_text_to_image_model_loads_by_name_and_reads_its_prompts():
    from diffusers import UNet2DConditionModel
    from diffrep import load_backbone
    from diffrep.core import Featurizer
    bb = load_backbone("scenes-t2i")
    assert isinstance(bb.denoiser, UNet2DConditionModel) and bb.image_channels == 3 and bb.image_size == 32
    grass, brick = bb.condition(1, "a three on grass"), bb.condition(1, "a seven on brick wall")
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    with torch.no_grad():   # trained: the prompt changes the prediction
        assert not torch.allclose(bb.denoiser(x, t, grass).sample, bb.denoiser(x, t, brick).sample)
    from diffrep.segment.odise.features import pyramid_taps
    assert [b.stride for b in pyramid_taps(Featurizer(bb))] == [1, 2, 4, 8]


def test_closed_set_logits_are_mapped_onto_another_vocabulary_by_name():
    from diffrep.segment.odise.model import closed_set_columns
    train = Vocabulary.parse("zero;one;stuff:grass,lawn")
    full = Vocabulary.parse("zero;one;eight;stuff:lawn")          # another order and ids, a synonym, a new name
    logits = torch.tensor([[[1.0, 2.0, 3.0, 0.5]]])                 # zero, one, grass, null
    mapped = closed_set_columns(logits, train, full)
    assert mapped.shape == (1, 1, 5)
    assert mapped[0, 0].tolist()[:2] == [1.0, 2.0] and mapped[0, 0, 3] == 3.0 and mapped[0, 0, 4] == 0.5
    assert mapped[0, 0, 2] < -1e3                                  # "eight" was never trained: it cannot win
