"""DDPM-Seg: few-label semantic segmentation with an ensemble of per-pixel MLPs on a diffusion
model's decoder features (config, the reference's settings per data set, pixel sampling, training,
--select, prediction and evaluation)."""

from .config import SegConfig, default_levels
from .pools import PixelPools, held_out_sets, sample_pixels, usable_pixels
from .predict import EvalConfig, Segmenter, evaluate, predict_files, predict_image
from .train import feature_sources, load_heads, save_heads, train_segmenter, with_colour_copies

__all__ = ["EvalConfig", "SegConfig", "Segmenter", "default_levels", "evaluate", "feature_sources", "held_out_sets", "load_heads", "PixelPools",
           "sample_pixels", "usable_pixels",
           "predict_files", "predict_image", "save_heads", "train_segmenter", "with_colour_copies"]
