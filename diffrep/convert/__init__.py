"""Checkpoints from other code bases as diffusers folders: OpenAI's guided-diffusion (ADM)."""

from .adm_unet import ADMUNet2DModel
from .guided_diffusion import PRESETS, cached_folder, convert, parse_flags

__all__ = ["ADMUNet2DModel", "PRESETS", "cached_folder", "convert", "parse_flags"]
