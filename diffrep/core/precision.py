"""Devices and precisions: which device a command runs on (`--device`), which precision
(`--precision`: fp32, bf16, fp16, or auto, resolved to bf16 where it is native), and the autocast
and weight dtypes each gives."""

from __future__ import annotations


import torch

from ..errors import DiffrepError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}   # autocast dtype (None: off)
"""The reduced precisions by name (`--precision`): each its autocast dtype (None: fp32, no autocast)."""


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """'auto' (CUDA when present, else the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps', checked to exist here."""
    if str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise DiffrepError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DiffrepError(f"device {spec}: this machine has no CUDA GPU that torch can use; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DiffrepError(f"device {spec}: there are only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DiffrepError(f"device {spec}: Apple's MPS backend is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DiffrepError(f"unsupported device {spec!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def autocast_dtype(precision: str, device: torch.device):
    """The autocast dtype of a precision on a device (None: full fp32). fp16 on the CPU is refused:
    its CPU kernels are slow or missing; bf16 is the CPU's reduced precision."""
    if precision not in PRECISIONS:
        raise DiffrepError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "fp16" and torch.device(device).type == "cpu":
        raise DiffrepError("fp16 on the CPU is refused (its CPU kernels are slow or missing): use --precision bf16 "
                           "or fp32 on the CPU, fp16 on a GPU")
    return PRECISIONS[precision]


def autocast_in(device, dtype):
    """`torch.autocast` on `device` (a device, or its type) in `dtype`; off (fp32) when dtype is None."""
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)


def resolve_precision(precision: str, device) -> str:
    """'auto' → 'bf16' where bf16 is native (`native_bf16`: a GPU that supports it, a CPU with AVX-512
    bf16 or AMX), else 'fp32'; any other precision as given. Resolved once, when a command's settings
    are made, so that its results record the precision that really ran."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(resolve_device(device)) else "fp32"


def native_bf16(device) -> bool:
    """Whether bf16 runs on native kernels here: any CUDA GPU that supports it, or a CPU with AVX-512 bf16
    or AMX whose AVX-512 kernels torch uses (not lowered by ATEN_CPU_CAPABILITY, as when an AVX2
    machine is imitated). Elsewhere (an AVX2 CPU) bf16 autocast is emulated: a 1.5M-parameter UNet's
    training step took 57 s in bf16 against 2.7 s in fp32 on a 2-core AVX2 EPYC."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512") and \
            any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def weight_dtype(precision: str, device) -> torch.dtype:
    """The dtype the weights are cast to: bf16/fp16 on a GPU (SD-2.1's 5.2 GB of fp32 weights then take
    half), float32 on the CPU, where autocast runs the reduced-precision kernels and nothing is gained
    by casting."""
    dtype = autocast_dtype(precision, device)
    return torch.float32 if dtype is None or torch.device(device).type == "cpu" else dtype
