"""The linear-probe grid: informative cells learn, noise cells stay at chance, choices use validation."""

from __future__ import annotations

import pytest
import torch

from diffrep.data import holdout_split
from diffrep.heads import cross_validated_accuracy, train_probe_grid
from diffrep.heads.probe import _WidthGroup
from diffrep.classify.ddae import SweepConfig, cross_validated_choice, summarise
from diffrep.features import Cell


def test_probe_grid_separates_signal_from_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (600,), generator=g)
    centres = torch.randn(4, 16, generator=g) * 3
    signal = centres[y] + torch.randn(600, 16, generator=g)
    noise = torch.randn(600, 16, generator=g)
    feats = {"signal": signal, "noise": noise}
    train = {k: v[:400] for k, v in feats.items()}
    test = {k: v[400:] for k, v in feats.items()}
    scores = train_probe_grid(train, y[:400], test, y[400:], epochs=30, batch_size=64)
    assert scores["signal"]["accuracy"] > 0.95
    assert scores["noise"]["accuracy"] < 0.45
    assert set(scores["signal"]) == {"accuracy", "val_accuracy", "weight_decay"}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_cells_probe_does_not_depend_on_the_other_cells_or_their_order(precision):
    # a sweep over cached features (keys read back in another order) must equal the sweep that computed them
    y, feats = _signal_and_noise(n=200)
    feats[Cell(1, "weak", 1)] = feats[Cell(1, "signal", 1)] + 4 * torch.randn(200, 16, generator=torch.Generator().manual_seed(3))
    run = lambda cells: train_probe_grid({k: feats[k][:150] for k in cells}, y[:150],
                                         {k: feats[k][150:] for k in cells}, y[150:], epochs=5, batch_size=32,
                                         precision=precision)
    together = run(list(feats))
    assert run(list(feats)[::-1]) == together
    assert run([Cell(1, "weak", 1)])[Cell(1, "weak", 1)] == together[Cell(1, "weak", 1)]


def test_the_fast_loss_is_the_cross_entropy_to_rounding():
    """The bf16 probes' loss (log-sum-exp minus the true logit) against torch's cross_entropy, value and
    gradient, on logits large enough that an unshifted exp would overflow."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 64, 2 * 10, generator=g) * 40).requires_grad_()
    y = torch.randint(0, 10, (64,), generator=g)
    exact = _WidthGroup.loss(logits, y, 10)
    (want,) = torch.autograd.grad(exact, logits)
    fast = _WidthGroup.fast_loss(logits, y, 10)
    (got,) = torch.autograd.grad(fast, logits)
    assert torch.isfinite(fast) and fast.item() == pytest.approx(exact.item(), rel=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_bf16_probes_score_as_fp32_ones():
    y, feats = _signal_and_noise(n=400)
    run = lambda precision: train_probe_grid({k: v[:300] for k, v in feats.items()}, y[:300],
                                             {k: v[300:] for k, v in feats.items()}, y[300:], epochs=10,
                                             batch_size=32, precision=precision)
    full, low = run("fp32"), run("bf16")
    for cell in feats:
        assert low[cell]["accuracy"] == pytest.approx(full[cell]["accuracy"], abs=0.03)
    assert low[Cell(1, "signal", 1)]["accuracy"] > 0.9


def test_cross_validation_with_augmented_copies_fits_on_them_and_never_on_held_out_copies():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (120,), generator=g)
    centres = torch.randn(4, 16, generator=g) * 2
    x = {"c": centres[y] + torch.randn(120, 16, generator=g)}
    cv = lambda copies=None: cross_validated_accuracy(x, y, {"c": 1e-3}, folds=3, epochs=20, copies=copies)["c"]
    plain = cv()
    # copies that look like the next class but carry this one's label: fitting on them must hurt
    mislabelled = cv({"c": centres[(y + 1) % 4].repeat(2, 1)})
    assert plain > 0.85 and mislabelled < plain - 0.3
    assert abs(mislabelled * 120 - round(mislabelled * 120)) < 1e-3  # the 120 originals scored, once each
    # exact duplicates of pure-noise features: if a held-out sample's copies leaked into its fold's fit
    # set, its 200-dim noise would be memorised and scored near 100%; without a leak it stays near chance
    noise = {"c": torch.randn(120, 200, generator=g)}
    leaked = cross_validated_accuracy(noise, y, {"c": 1e-3}, folds=3, epochs=20, copies={"c": noise["c"].repeat(2, 1)})
    assert leaked["c"] < 0.5
    with pytest.raises(ValueError, match="whole copies of its 120 samples"):
        cross_validated_accuracy(x, y, {"c": 1e-3}, folds=3, copies={"c": x["c"][:100]})


def _signal_and_noise(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    return y, {Cell(1, "signal", 1): torch.randn(4, 16, generator=g)[y] * 3 + torch.randn(n, 16, generator=g),
               Cell(1, "noise", 1): torch.randn(n, 16, generator=g)}


def test_cross_validation_scores_every_sample_once_and_ranks_signal_first():
    y, feats = _signal_and_noise()
    cv = cross_validated_accuracy(feats, y, dict.fromkeys(feats, 1e-3), folds=3, epochs=150)
    assert cv[Cell(1, "signal", 1)] > 0.8 and cv[Cell(1, "noise", 1)] < 0.45
    # a multiple of 1/n: each sample was scored exactly once
    assert all(abs(v * len(y) - round(v * len(y))) < 1e-3 for v in cv.values())
    with pytest.raises(ValueError, match="folds"):
        cross_validated_accuracy(feats, y, dict.fromkeys(feats, 1e-3), folds=1)


def test_sweep_choice_overrules_a_lucky_validation_score():
    """A noise cell that the held-out eighth happened to favour loses to the signal cell under
    cross-validation over the whole train split."""
    y, feats = _signal_and_noise()
    cells = [{"t": 1, "block": "noise", "pool": 1, "val_accuracy": 0.99, "accuracy": 0.2, "weight_decay": 1e-3},
             {"t": 1, "block": "signal", "pool": 1, "val_accuracy": 0.98, "accuracy": 0.9, "weight_decay": 1e-4}]
    best, short = cross_validated_choice(SweepConfig(shortlist=2, folds=3, epochs=150), {None: cells}, feats, y)[None]
    assert best["block"] == "signal" and [c["block"] for c in short] == ["noise", "signal"]
    assert short[0]["cv_accuracy"] < 0.45 < 0.8 < short[1]["cv_accuracy"]
    best, _ = cross_validated_choice(SweepConfig(shortlist=1, folds=3, epochs=150), {None: cells}, feats, y)[None]
    assert best["block"] == "noise"  # a shortlist of one keeps validation's choice


def test_holdout_split_is_a_partition():
    fit, val = holdout_split(80)
    assert len(val) == 10 and sorted(torch.cat([fit, val]).tolist()) == list(range(80))


def test_best_cell_is_chosen_on_validation_not_test():
    scores = {Cell(5, "mid_block", 1): {"accuracy": 0.99, "val_accuracy": 0.80, "weight_decay": 1e-3},
              Cell(50, "mid_block", 1): {"accuracy": 0.95, "val_accuracy": 0.90, "weight_decay": 1e-3}}
    result = summarise(SweepConfig(ts=[5, 50], blocks=["mid_block"], pools=[1], baselines=False), scores, 10, 10)
    assert (result["best"]["t"], result["best"]["accuracy"]) == (50, 0.95)
    assert result["best_test_cell"]["t"] == 5


def test_explicit_split_trains_only_on_its_rows():
    """Rows outside (fit, validation) — here garbage with wrong labels — must not touch the probe."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (120,), generator=g)
    x = torch.randn(3, 8, generator=g)[y] * 3 + torch.randn(120, 8, generator=g)
    test_x, test_y = x[100:], y[100:]
    fit, val = torch.arange(0, 80), torch.arange(80, 100)
    clean = train_probe_grid({"c": x[:100]}, y[:100], {"c": test_x}, test_y, epochs=5, split=(fit, val),
                             weight_decays=(1e-3,))
    garbage = torch.cat([x[:100], torch.randn(50, 8) * 100])
    mixed = train_probe_grid({"c": garbage}, torch.cat([y[:100], (y[:50] + 1) % 3]), {"c": test_x}, test_y, epochs=5,
                             split=(fit, val), weight_decays=(1e-3,))
    assert mixed == clean and clean["c"]["weight_decay"] == 1e-3


def test_final_refit_without_validation_needs_one_weight_decay():
    """The sweep's final probe trains on every train row: no validation, so no choice to make."""
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 3, (90,), generator=g)
    x = torch.randn(3, 8, generator=g)[y] * 3 + torch.randn(90, 8, generator=g)
    everything, nothing = torch.arange(60), torch.arange(0)
    score = train_probe_grid({"c": x[:60]}, y[:60], {"c": x[60:]}, y[60:], epochs=100, batch_size=16, split=(everything, nothing),
                             weight_decays=(1e-3,))["c"]
    assert score["val_accuracy"] is None and score["accuracy"] > 0.9
    with pytest.raises(ValueError, match="weight decay"):
        train_probe_grid({"c": x[:60]}, y[:60], {"c": x[60:]}, y[60:], epochs=1, split=(everything, nothing))


def test_heatmap_grid_shows_the_chosen_cell_at_its_own_pool():
    from diffrep.classify.ddae import best_pool_grid

    cell = lambda t, block, pool, val, acc: {"t": t, "block": block, "pool": pool, "val_accuracy": val, "accuracy": acc}
    cells = [cell(5, "a", 2, 0.9, 0.80), cell(5, "a", 4, 0.9, 0.85), cell(5, "b", 2, 0.7, 0.60), cell(5, "b", 4, 0.8, 0.65)]
    grid = best_pool_grid({"ts": [5], "blocks": ["a", "b"], "cells": cells, "best": cells[1]})
    assert grid.tolist() == [[pytest.approx(0.85), pytest.approx(0.65)]]  # chosen a@4 (a validation tie with a@2); b at its best pool


def test_per_cell_weight_decays_train_as_separate_runs_would():
    """Cross-validation trains every cell at its own decay in one pass; each must equal its own run."""
    y, feats = _signal_and_noise(n=160)
    decays = {Cell(1, "signal", 1): 1e-4, Cell(1, "noise", 1): 300.0}   # 300: strong enough to move its scores
    run = lambda cells, wd: train_probe_grid({k: feats[k][:120] for k in cells}, y[:120],
                                             {k: feats[k][120:] for k in cells}, y[120:], epochs=5, batch_size=32,
                                             weight_decays=wd)
    together = run(list(decays), decays)
    for cell, wd in decays.items():
        assert together[cell] == run([cell], (wd,))[cell]
    assert together[Cell(1, "noise", 1)] != run([Cell(1, "noise", 1)], (1e-4,))[Cell(1, "noise", 1)]
