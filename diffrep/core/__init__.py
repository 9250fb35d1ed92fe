"""The core of the data path: backbones (loading, noise forms, conditioning) and the featurizer
(taps on named blocks, early stop), with the default blocks of each use."""

from .backbone import Backbone, EDMNoise, VPNoise, load_backbone, noise_form, null_class, random_init, run_denoiser
from .blocks import default_blocks
from .featurizer import BlockInfo, Featurizer

__all__ = ["Backbone", "BlockInfo", "EDMNoise", "Featurizer", "VPNoise", "default_blocks", "load_backbone",
           "noise_form", "null_class", "random_init", "run_denoiser"]
