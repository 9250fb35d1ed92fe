"""ODISE: open-vocabulary panoptic segmentation from a text-to-image diffusion model's features
(a Mask2Former mask generator whose masks are named by text embeddings of category names)."""

from .model import PanopticConfig, load_model
from .train import run_panoptic_train

__all__ = ["PanopticConfig", "load_model", "run_panoptic_train"]
