"""Classification from frozen diffusion features. `ddae`: the t × block linear-probe sweep."""

from .ddae import SweepConfig, run_sweep

__all__ = ["SweepConfig", "run_sweep"]
