"""How heads are trained (`diffrep.heads.recipe`): the schedules, what is decayed, choosing on
validation, seeds and their spread, ties; and the CNN trained from scratch (`ImageCNN`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffrep.features import PixelPatches
from diffrep.heads.classifier import ConvHead, FusionHead, ImageCNN, PooledHead, make_head, random_shift
from diffrep.heads.recipe import (Recipe, compare, evaluate, grid, optimizer, schedule, search, search_and_repeat,
                                  spread, train)


def _rates(recipe: Recipe, steps_per_epoch: int) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=recipe.lr)
    sched = schedule(opt, recipe, steps_per_epoch)
    rates = []
    for _ in range(recipe.epochs * steps_per_epoch):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def test_adamw_warms_up_linearly_then_decays_by_a_cosine_to_zero():
    rates = _rates(Recipe(lr=1.0, epochs=10, warmup=0.1), 10)          # 100 steps, 10 of warm-up
    assert rates[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert rates[10] == pytest.approx(1.0) and rates[55] == pytest.approx(0.5, abs=0.02)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:])) and rates[-1] < 1e-3


def test_sgd_divides_by_ten_at_each_quarter_as_the_reference():
    rates = _rates(Recipe("sgd", lr=1.0, epochs=8), 3)                   # quarters of 2 epochs = 6 steps
    assert rates == pytest.approx([1.0] * 6 + [0.1] * 6 + [0.01] * 6 + [0.001] * 6)
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        Recipe("adam")


def test_only_weight_matrices_and_kernels_are_decayed():
    head = make_head("attention", [(8, 4, 4)], 1, 3, width=16)
    opt = optimizer(head, Recipe(weight_decay=0.3))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.3 for p in g["params"]}
    kept = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(head.cls) in kept and id(head.norms[0].weight) in kept and id(head.classify.bias) in kept
    assert id(head.positions[0]) in kept
    assert id(head.classify.weight) in decayed and id(head.project[0].weight) in decayed
    assert id(head.transformer.layers[0].self_attn.in_proj_weight) in decayed
    assert len(decayed) + len(kept) == sum(1 for p in head.parameters() if p.requires_grad)


def test_grids_by_head_and_the_user_s_grid_wins():
    base = Recipe(epochs=3)
    assert [(r.lr, r.weight_decay) for r in grid("attention", base)] == [(3e-4, 5e-2), (1e-3, 5e-2)]
    assert len(grid("linear", base)) == 6 and all(r.epochs == 3 for r in grid("linear", base))
    assert [(r.lr, r.weight_decay) for r in grid("cnn", base, [0.1], [0.0, 1.0])] == [(0.1, 0.0), (0.1, 1.0)]
    assert [(r.lr, r.weight_decay) for r in grid("attention", Recipe("sgd"))] == [(5e-2, 1e-4)]


def _task(n=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 4, 4, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    x[:, 1] += 3 * y[:, None, None]                                      # a strong signal in channel 1
    return x, y


def _batches(x, y, idx, gen=None):
    def run():
        order = idx[torch.randperm(len(idx), generator=gen)] if gen is not None else idx
        for s in range(0, len(order), 32):
            yield [x[order[s:s + 32]]], y[order[s:s + 32]]
    return run


def test_training_keeps_the_epoch_best_on_validation_and_stops_early():
    torch.manual_seed(0)
    x, y = _task()
    head = PooledHead(4, 1, 2)
    fit = train(head, _batches(x, y, torch.arange(300), torch.Generator().manual_seed(0)),
                _batches(x, y, torch.arange(300, 400)), Recipe(lr=1e-2, epochs=30, patience=3), 10)
    scores = [(h["val_accuracy"], -h["val_loss"]) for h in fit["history"]]
    assert fit["epoch"] == 1 + scores.index(max(scores))                 # accuracy first, loss breaks ties
    assert fit["epochs_run"] == len(fit["history"]) < 30 and fit["epochs_run"] - fit["epoch"] == 3
    assert evaluate(head, _batches(x, y, torch.arange(300, 400))())[0] == pytest.approx(fit["val_accuracy"])
    assert fit["val_accuracy"] > 0.95


def test_without_validation_every_epoch_runs_and_the_last_is_kept():
    torch.manual_seed(0)
    x, y = torch.randn(64, 2, 2, 2), torch.randint(0, 2, (64,))
    fit = train(PooledHead(2, 1, 2), lambda: iter([([x], y)]), None, Recipe(epochs=3, patience=1), 1)
    assert fit["val_accuracy"] is None and fit["epoch"] == 3 and len(fit["history"]) == 3


def test_search_keeps_the_recipe_best_on_validation_and_records_the_grid():
    val = {0.1: (0.90, 0.3), 0.2: (0.95, 0.4), 0.3: (0.95, 0.2), 0.4: (0.80, 0.1)}
    built = []

    def build():
        built.append(torch.randn(1).item())                                # the seed is set before each build
        return nn.Linear(1, 1)

    def fit(head, recipe, seed, label):
        return {"val_accuracy": val[recipe.lr][0], "val_loss": val[recipe.lr][1], "epoch": 2, "epochs_run": 4,
                "train_s": 1.0}
    recipes = [Recipe(lr=lr) for lr in val]
    chosen, _, fitted, rows = search(build, recipes, fit, seed=7)
    assert chosen.lr == 0.3 and fitted["val_accuracy"] == 0.95           # the tie on accuracy goes to the lower loss
    assert [r["lr"] for r in rows] == list(val) and len(set(built)) == 1


def test_seeds_retrain_the_chosen_recipe_and_report_mean_and_spread():
    x, y = _task()
    seen = []

    def fit(head, recipe, seed, label):
        seen.append((recipe.lr, seed))
        return train(head, _batches(x, y, torch.arange(300), torch.Generator().manual_seed(seed)),
                     _batches(x, y, torch.arange(300, 400)), recipe, 10)

    def score(head):
        return evaluate(head, _batches(x, y, torch.arange(300, 400))())[0]
    numbers, recipe = search_and_repeat(lambda: PooledHead(4, 1, 2), [Recipe(lr=1e-3, epochs=2), Recipe(lr=3e-2, epochs=2)],
                                        fit, [0, 1, 2], score)
    assert seen[:2] == [(1e-3, 0), (3e-2, 0)] and seen[2:] == [(recipe.lr, 1), (recipe.lr, 2)]
    assert numbers["seeds"] == [0, 1, 2] and len(numbers["accuracies"]) == 3 == len(numbers["best_epochs"])
    assert numbers["accuracy"] == pytest.approx(sum(numbers["accuracies"]) / 3)
    assert numbers["accuracy_sd"] == pytest.approx(spread(numbers["accuracies"]))
    assert numbers["recipe"]["lr"] == recipe.lr and len(numbers["grid"]) == 2


def test_a_difference_within_the_spreads_is_a_tie():
    assert compare([0.98, 0.97, 0.99], [0.975, 0.985, 0.97])["verdict"] == "tie"
    c = compare([0.99, 0.991, 0.989], [0.95, 0.951, 0.949])
    assert c["verdict"] == "better" and c["difference"] == pytest.approx(0.04) and c["margin"] == pytest.approx(0.002)
    assert compare([0.90, 0.91], [0.95, 0.96])["verdict"] == "worse"
    assert compare([0.9], [0.8])["verdict"] == "better (one seed: no spread)" and spread([0.5]) == 0.0


def test_the_cnn_from_scratch_reads_the_whole_image_back_from_the_pixel_patches():
    images = torch.randn(3, 1, 32, 32)
    patches = PixelPatches(4, 1).maps(images)["pixels"]
    cnn = make_head("cnn", [tuple(patches.shape[1:])], 1, 10, pixel_factor=4)
    assert isinstance(cnn, ImageCNN) and isinstance(make_head("cnn", [(16, 8, 8)], 1, 10), ConvHead)
    seen = {}
    cnn.layers[0].register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    cnn.eval()
    assert cnn([patches]).shape == (3, 10) and torch.equal(seen["x"], images)   # no shift outside training
    convs = [m for m in cnn.layers if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128] and all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in cnn.layers) == 2
    assert not isinstance(make_head("attention", [(16, 8, 8)], 1, 10, width=16, pixel_factor=4), ImageCNN)
    assert isinstance(make_head("attention", [(16, 8, 8)], 1, 10, width=16), FusionHead)


def test_random_shifts_translate_each_image_within_the_range_with_zero_fill():
    torch.manual_seed(0)
    x = torch.zeros(64, 2, 9, 9)
    x[:, :, 4, 4] = torch.tensor([1.0, 2.0])                             # one bright pixel in the middle
    moved = random_shift(x, 2)
    where = [(int(i // 9), int(i % 9)) for i in moved[:, 0].flatten(1).argmax(1)]
    assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in where) and len(set(where)) > 5
    assert torch.equal(moved.sum((2, 3)), x.sum((2, 3)))                  # the pixel is moved, not lost
    assert torch.equal(moved[:, 1], 2 * moved[:, 0])                      # every channel moved together
