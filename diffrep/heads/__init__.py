"""Heads on frozen features: the grid of linear probes (classification) and DDPM-Seg's ensemble of
per-pixel MLPs (segmentation)."""

from .pixel_mlp import PixelMLPs, ensemble_uncertainty, majority_vote, train_heads
from .probe import WEIGHT_DECAYS, augmented_epochs, cross_validated_accuracy, train_probe_grid

__all__ = ["PixelMLPs", "WEIGHT_DECAYS", "augmented_epochs", "cross_validated_accuracy", "ensemble_uncertainty",
           "majority_vote", "train_heads", "train_probe_grid"]
