"""Segmentation methods. `ddpm_seg`: few-label semantic segmentation (DDPM-Seg)."""

from .ddpm_seg import EvalConfig, SegConfig, evaluate, predict_files, train_segmenter

__all__ = ["EvalConfig", "SegConfig", "evaluate", "predict_files", "train_segmenter"]
