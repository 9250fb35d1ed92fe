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
from ..options import check, option
from .precision import PRECISIONS, resolve_device, resolve_precision


@dataclass
class ModelOptions:
    """How a guided-diffusion checkpoint given as `--model FILE.pt` is read, and what a class-conditional
    pixel UNet is fed."""
    preset: str | None = option(None, "for a guided-diffusion .pt --model: the published model it is "
                                      "(adm-256-uncond, lsun-bedroom, ddpm-seg-ffhq, imagenet-64, …; "
                                      "`diffrep convert guided-diffusion --help` lists them)")
    flags: str | None = option(None, "for a guided-diffusion .pt --model: its MODEL_FLAGS exactly as the reference "
                                     "scripts pass them, quoted: --flags=\"--image_size 256 --num_channels 256 …\"")
    class_label: int = option(0, "the ImageNet class fed to a class-conditional pixel UNet (ADM's ImageNet models, "
                                 "which have no unconditional label) for every image", min=0)

    def model_options(self) -> dict:
        """The keyword arguments of `load_backbone` these settings give."""
        return dict(preset=self.preset, flags=self.flags, class_label=self.class_label)


@dataclass
class RunOn(ModelOptions):
    """The settings every command that runs a model shares: the model options plus `device` and
    `precision` (`auto` is resolved when the settings are made, so results record what ran)."""
    device: str = option("auto", "where the model runs: auto (CUDA when present, else the CPU), cpu, cuda, cuda:N "
                                 "or mps")
    precision: str = option("auto", "autocast precision of the model: auto (bf16 where it is native: a GPU, or a "
                                    "CPU with AVX-512 bf16 or AMX; fp32 elsewhere), fp32, bf16 or fp16 (fp16 on "
                                    "GPUs only)", choices=("auto", *PRECISIONS), aliases={"--bf16": "bf16"})

    def __post_init__(self):
        """Every setting checked, and 'auto' precision resolved for this machine (results record what ran)."""
        check(self)
        self.precision = resolve_precision(self.precision, self.device)


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


def barrier(state) -> None:
    """Wait for every process of a multi-process run (nothing alone)."""
    if state is not None and state.num_processes > 1:
        state.wait_for_everyone()


def release_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim), called once per batch.
    glibc raises its mmap threshold whenever a large block is freed, so batch-sized tensors move
    into the heap and fragment it batch after batch: without this, `diffrep features` over 20,000
    images peaked 58% above the same over 2,000; with it, 6%. (Fixing the threshold at 1 MB instead
    kept it flat but made the forwards 1.6× slower: every large tensor then costs a fresh mapping.)
    Elsewhere than glibc this does nothing."""
    try:
        _LIBC.malloc_trim(0)
    except AttributeError:
        pass


try:
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
except OSError:
    _LIBC = None
