"""Classification from frozen diffusion features. `ddae`: the t × block linear-probe sweep; `gdc`:
light heads (linear, MLP, CNN, attention) and DifFormer's fusion, `diffrep classify`; `feedback`:
DifFeed's decoder-to-encoder feedback through hooks."""

from .ddae import SweepConfig, run_sweep
from .feedback import Feedback, feedback_pairs
from .gdc import ClassifyConfig, run_classify

__all__ = ["ClassifyConfig", "Feedback", "SweepConfig", "feedback_pairs", "run_classify", "run_sweep"]
