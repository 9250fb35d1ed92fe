"""DifFeed: a head on a decoder block of a *second* pass, whose encoder received the first pass's
decoder features (`feedback.Feedback`). The `feedback` row of `diffrep classify`.

    image i ─► x_t (noise from (seed, i, 0, t), as the cached features) ─► pass 1, no grad: every decoder block
            ─► adapters (1×1 conv + BN + ReLU) ─► added to the mirrored encoder blocks in pass 2
               (or to those `--feedback-pairs` names: `--reference diffssl` feeds block b to 38 − b)
            ─► the read block of pass 2, pooled to ≤ 16×16 ─► the attention head

Only the adapters and the head train (`heads.recipe`, one learning rate for both: the recipe chosen
for the attention head on the same cell, else the attention grid searched here); the UNet is frozen. The two passes run live on every batch, so this row costs about
three forwards per image per epoch where the cached heads cost none.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import Featurizer
from ..data.holdout import holdout_split
from ..data.images import match_channels
from ..data.stream import ImageBatches
from ..heads.classifier import accuracy, make_head, parameter_count, pool_to_token_grid
from ..heads.recipe import grid, search_and_repeat, train
from .feedback import Feedback, _check_unet
from .report import format_row


def check_model(backbone) -> None:
    """Refuse a denoiser without encoder and decoder (DiT) before any work."""
    _check_unet(backbone.denoiser)


class FeedbackClassifier(nn.Module):
    """Images (B×C×H×W in [-1, 1]) with their data-set indices → logits, through two passes of the
    frozen `backbone` at level `t` and a head on `read_block` of pass 2."""

    def __init__(self, backbone, read_block: str, t, head: nn.Module, seed: int, pairs: dict | None = None):
        super().__init__()
        self.backbone, self.read_block, self.t, self.seed = backbone, read_block, t, seed
        model = backbone.denoiser
        # without `pairs` ({decoder: encoder module}), every decoder block feeds back to its mirror, as the
        # reference feeds every decoder level
        every_level = [f"up_blocks.{j}" for j in range(len(getattr(model, "up_blocks", [])))]
        self.feedback = Feedback(model, every_level) if pairs is None else Feedback(model, pairs=pairs)
        self.head = head

    def read(self, images: torch.Tensor, indices) -> torch.Tensor:
        """The read block of pass 2, pooled to the token grid; x_t's noise as the cached features'."""
        bb, featurizer = self.backbone, Featurizer(self.backbone)
        latents = bb.encode(match_channels(images, bb.image_channels).to(bb.device))
        x_t = featurizer.noised(latents, self.t, self.seed, [int(i) for i in indices])
        model_in, timestep, cond = featurizer.denoiser_inputs(x_t, self.t)
        feats = self.feedback.forward_two_passes(bb.denoiser, model_in, timestep, [self.read_block], cond)
        return pool_to_token_grid(feats[self.read_block].float())

    def forward(self, batch) -> torch.Tensor:
        images, indices = batch
        return self.head([self.read(images, indices)])


def _live_batches(images, labels, idx: torch.Tensor, size: int, workers: int, gen=None):
    order = idx[torch.randperm(len(idx), generator=gen)] if gen is not None else idx
    lists = [order[s:s + size].tolist() for s in range(0, len(order), size)]
    for rows, batch in ImageBatches(images, size, workers, batches=lists):
        yield [(batch, rows)], labels[torch.as_tensor(rows)]


class _Unwrap(nn.Module):
    """The training loop hands heads a list of inputs; this one takes the (images, indices) pair."""

    def __init__(self, inner: FeedbackClassifier):
        super().__init__()
        self.inner = inner

    def forward(self, inputs: list) -> torch.Tensor:
        return self.inner(inputs[0])


def train_feedback_row(cfg, source_name: str, backbone, splits: dict, classes: int, device, dtype,
                       recipe=None) -> dict:
    """The `feedback` row: trained on the train split minus the held-out eighth (epoch chosen there)
    by `recipe` (None: the attention head's grid, searched here), once per seed; test scored once per seed."""
    labels = {s: d.labels for s, d in splits.items()}
    train_images = splits["train"].images
    if "val" in splits:   # the data set's own validation split
        fit, val = torch.arange(len(labels["train"])), torch.arange(len(labels["val"]))
        val_images, val_labels = splits["val"].images, labels["val"]
    else:
        fit, val = holdout_split(len(labels["train"]), seed=cfg.seed)
        val_images, val_labels = train_images, labels["train"]
    block, t = cfg.head_block, cfg.head_t
    pairs = dict(map(tuple, cfg.feedback_pairs)) if cfg.feedback_pairs else None
    for p in backbone.denoiser.parameters():
        p.requires_grad_(False)
    with torch.no_grad():   # the read block's shape, for the head
        probe = FeedbackClassifier(backbone, block, t, nn.Identity(), cfg.seed, pairs)
        rows, first = next(iter(ImageBatches(splits["train"].images, 1, batches=[[0]])))
        shape = tuple(probe.read(first, rows).shape[1:])

    def head():
        return make_head("attention", [shape], 1, classes, width=cfg.width, depth=cfg.depth, positions=cfg.positions,
                         dropout=cfg.dropout)

    def build():
        return _Unwrap(FeedbackClassifier(backbone, block, t, head(), cfg.seed, pairs))

    def fit_model(model, recipe, seed, label):
        gen = torch.Generator().manual_seed(seed)
        return train(model, lambda: _live_batches(train_images, labels["train"], fit, cfg.train_batch, cfg.workers, gen),
                     lambda: _live_batches(val_images, val_labels, val, cfg.batch_size, cfg.workers), recipe,
                     -(-len(fit) // cfg.train_batch), device, label, dtype)

    def score(model):
        return accuracy(model, _live_batches(splits["test"].images, labels["test"], torch.arange(len(labels["test"])),
                                             cfg.batch_size, cfg.workers), device, dtype)

    recipes = [recipe] if recipe is not None else grid("attention", cfg.recipe(), cfg.lr, cfg.weight_decay)
    numbers, _ = search_and_repeat(build, recipes, fit_model, cfg.head_seeds(), score, f"{source_name} feedback")
    # the shape probe's adapters are those every trained model had: its pairs and size, without another UNet pass
    row = {"source": source_name, "head": "feedback", "kind": "feedback", "pool": None,
           "cells": [{"t": t, "block": block}], "fed_back": probe.feedback.pairs, "labels_per_class": "all",
           "n_fit": len(fit), **numbers, "parameters": parameter_count(probe.feedback) + parameter_count(head())}
    print(format_row(f"{source_name} feedback", row))
    return row
