"""Where and in what precision a model runs: the two settings every command that runs a model takes
(`--device`, `--precision`; `--bf16` is kept as the short form of `--precision bf16`), and the
process group of a multi-process run."""

from __future__ import annotations

import ctypes
import ctypes.util
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


M_MMAP_THRESHOLD = -3   # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20


def steady_memory() -> None:
    """Keep a long extraction's memory flat: glibc raises its mmap threshold each time a large block
    is freed, so batch-sized tensors (tens of MB) end up in the heap, where they fragment and the
    resident size creeps up with the number of batches (measured: 2,000 images peaked at 0.76 GB,
    20,000 at 1.11 GB). A fixed 1 MB threshold gives every large tensor its own mapping, returned
    when freed (16,000 images: 0.81 GB against 1.18 GB). Elsewhere than glibc this does nothing."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass
