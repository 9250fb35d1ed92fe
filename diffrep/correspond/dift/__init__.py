"""DIFT: dense correspondence by cosine nearest neighbour of diffusion features (describers, joins of
blocks and noise levels as one descriptor, the chunked matcher and its sub-pixel refinement, the
warps / geo / SPair-71k evaluation and t × block sweep with its join rows, pictures, and DIFT's
published settings by name: `--reference dift-sd` / `dift-adm`)."""

from .describe import (Describer, DiffusionDescriber, category_prompt, concat_maps, daisy_describer, parse_descriptor,
                       pixel_describer)
from .evaluate import DescriptorConfig, MatchEvalConfig, predict, run_match_eval
from .sweep import run_match_sweep
from .frames import Prepared, check_points, pixel_grid, prepare
from .matching import Matches, dense_flow, match, match_maps, nearest
from .reference import REFERENCES, Reference
from .refine import Refinement, Refiner, refine_matches, refiner, soft_argmax

__all__ = ["DescriptorConfig", "Describer", "DiffusionDescriber", "MatchEvalConfig", "Matches", "Prepared",
           "REFERENCES", "Reference", "Refinement", "Refiner", "category_prompt", "check_points", "concat_maps",
           "daisy_describer", "dense_flow", "match", "match_maps", "nearest", "parse_descriptor", "pixel_describer",
           "pixel_grid", "predict", "prepare", "refine_matches", "refiner", "run_match_eval", "run_match_sweep",
           "soft_argmax"]
