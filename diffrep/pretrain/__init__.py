"""Generative pre-training: the DDPM and EDM objectives and the accelerate training loop."""

from .losses import DDPMLoss, EDMLoss
from .train import PretrainConfig, build_denoiser, build_scheduler, pretrain, sample, save_sample_grid

__all__ = ["DDPMLoss", "EDMLoss", "PretrainConfig", "build_denoiser", "build_scheduler", "pretrain", "sample",
           "save_sample_grid"]
