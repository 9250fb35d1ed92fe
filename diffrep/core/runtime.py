"""Where and in what precision a model runs: the two settings every command that runs a model takes
(`--device`, `--precision`; `--bf16` is kept as the short form of `--precision bf16`), and the
process group of a multi-process run."""

from __future__ import annotations

import os
from dataclasses import dataclass

from accelerate import PartialState

from ..errors import DiffrepError
from ..options import option
from .backbone import PRECISIONS, resolve_device


@dataclass
class RunOn:
    device: str = option("auto", "where the model runs: auto (CUDA when present, else the CPU), cpu, cuda, cuda:N "
                                 "or mps")
    precision: str = option("fp32", "autocast precision of the model: fp32, bf16 or fp16 (fp16 on GPUs only)",
                            choices=tuple(PRECISIONS), aliases={"--bf16": "bf16"})


def processes(device: str = "auto"):
    """(accelerate's PartialState, this process's device). Under `torchrun` / `accelerate launch`
    each process takes its own GPU (`--device auto` or `cuda`) or the CPU (gloo); alone, the device
    asked for."""
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu = resolve_device(device).type == "cpu"
    state = PartialState(cpu=cpu) if multi else None
    if multi and str(device) not in ("auto", "cuda", "cpu"):
        raise DiffrepError(f"--device {device} with {state.num_processes} processes: use auto or cuda (each process "
                           "takes its own GPU) or cpu")
    return state, (state.device if multi else resolve_device(device))
