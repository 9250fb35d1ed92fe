"""Correspondence methods. `dift`: dense correspondence from diffusion features (DIFT)."""

from .dift import MatchEvalConfig, match, run_match_eval, run_match_sweep

__all__ = ["MatchEvalConfig", "match", "run_match_eval", "run_match_sweep"]
