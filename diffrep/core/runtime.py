"""Where and in what precision a model runs: the two settings every command that runs a model takes
(`--device`, `--precision`; `--bf16` is kept as the short form of `--precision bf16`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import option
from .backbone import PRECISIONS


@dataclass
class RunOn:
    device: str = option("auto", "where the model runs: auto (CUDA when present, else the CPU), cpu, cuda, cuda:N "
                                 "or mps")
    precision: str = option("fp32", "autocast precision of the model: fp32, bf16 or fp16 (fp16 on GPUs only)",
                            choices=tuple(PRECISIONS), aliases={"--bf16": "bf16"})
