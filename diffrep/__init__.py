"""diffrep: pre-trained diffusion models as representation learners."""

from .backbone import Backbone, load_backbone
from .errors import DiffrepError

__all__ = ["Backbone", "DiffrepError", "load_backbone"]
__version__ = "0.1.0"
