"""The core of the data path: backbones (loading, noise forms, conditioning), devices and precisions,
and the featurizer (taps on named blocks, early stop), with the default blocks of each use."""

from .backbone import Backbone, EDMNoise, VPNoise, load_backbone, noise_form, null_class, random_init, run_denoiser
from .precision import PRECISIONS, autocast_dtype, resolve_device, weight_dtype
from .blocks import default_blocks
from .featurizer import BlockInfo, Featurizer, image_noise, noise_seed
from .runtime import ModelOptions, RunOn, barrier, processes, release_memory

__all__ = ["PRECISIONS", "Backbone", "BlockInfo", "EDMNoise", "Featurizer", "ModelOptions", "RunOn", "VPNoise", "autocast_dtype",
           "barrier", "default_blocks", "image_noise", "load_backbone", "noise_seed", "noise_form", "null_class",
           "processes", "random_init", "release_memory", "resolve_device", "run_denoiser", "weight_dtype"]
