"""DifFormer: one attention module fused over several blocks and noise levels (the `fusion` row of
`diffrep classify --heads fusion --blocks mid_block,up_blocks.0 --t 25,50,100`).

For each noise level t the tokens of every block (each map pooled to ≤ 16², LayerNorm, 1×1 conv to the
token width) are concatenated with a CLS token and passed through one attention module shared by
every t; the CLS outputs of the levels are concatenated → Linear. The module itself is
`heads.classifier.FusionHead`, shared with GDC's attention head (one block at one level); this module
says which cells it reads and in what order.
"""

from __future__ import annotations

from ..features import Cell

NAME = "fusion"


def fusion_spec(cells: list) -> dict:
    """The table row of the DifFormer head: every cell extracted."""
    return {"name": NAME, "kind": NAME, "pool": None, "cells": cells}


def fusion_layout(cells: list) -> tuple[list, int, int]:
    """(cells level by level, blocks within a level: the order FusionHead reads them in; number of
    blocks; number of levels). Raw pixels are one map."""
    if not all(isinstance(c, Cell) for c in cells):
        return list(cells), len(cells), 1
    levels, blocks = list(dict.fromkeys(c.t for c in cells)), list(dict.fromkeys(c.block for c in cells))
    return [Cell(t, b) for t in levels for b in blocks], len(blocks), len(levels)
