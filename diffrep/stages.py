"""Where a command's time goes: seconds and FLOPs per stage, against the machine's own matmul rate.

    meter = StageMeter(device)
    with meter.stage("features", "bf16"):
        ...                                  # the stage's work
    meter.table()                            # {stage: {seconds, gflop, gflop_per_s, matmul_fraction, precision}}

- FLOPs are torch's own count (`torch.utils.flop_counter.FlopCounterMode`): matmuls and convolutions,
  forward and backward, whatever the precision; elementwise work, pooling, copies and file writes
  count nothing. So a stage's fraction of the matmul rate says how much of its time the arithmetic
  that dominates a network could explain: near 1, the stage is as fast as this machine's matmuls; far
  below, something else (memory traffic, Python, small ops, I/O) takes the time.
- The matmul rate is measured here, once per precision, on square matmuls (2048² on a CPU, 8192² on a
  GPU), in the precision's autocast: the machine's practical peak, not its datasheet's.
- Counting costs Python per operation (tens of microseconds), nothing per FLOP: cheap around a few
  large operations (the probes' batched matmuls), ruinous around many small ones (per-image noise and
  distortions: it more than doubled the sweep's distorted copies). So a stage of many images is timed
  without the counter (`count=False`), and its FLOPs are one image's, counted apart, times the number
  of images (`image_flops`, `add`): every image costs the same FLOPs. Probe training is counted on
  one cell per feature width, for no epoch and for one, and extrapolated (`probe_flops`,
  `epoch_flops`): exact, as every cell of a width and every epoch cost the same.
"""

from __future__ import annotations

import io
import time
from contextlib import contextmanager, redirect_stdout

import torch
from torch.utils.flop_counter import FlopCounterMode

from .core.precision import autocast_dtype, autocast_in

COUNTING = "FLOP counting"   # the stage the meter's own counting is timed as


def matmul_rate(device, precision: str, repeats: int = 10) -> float:
    """GFLOP/s of a square matmul on `device` in `precision`'s autocast (the best of two timings)."""
    device = torch.device(device)
    side = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(side, side, device=device) for _ in range(2))
    dtype = autocast_dtype(precision, device)
    best = float("inf")
    with autocast_in(device, dtype):
        for _ in range(3):   # the first round warms up
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                a @ b
            _sync(device)
            best = min(best, time.perf_counter() - start)
    return 2 * side ** 3 * repeats / best / 1e9


def count_flops(fn) -> int:
    """torch's count of the FLOPs that `fn()` performs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def probe_flops(train, feats: dict, epochs: int, cells=None) -> int:
    """FLOPs of `train(epochs, cells)` over `cells` (default: all of `feats`), from one cell of each
    feature width: a cell's probe costs what every other cell of its width costs (the heads of one
    width train as one batched matmul), so the count is exact; counting every cell took 19 s of a
    303 s main job."""
    by_width: dict[int, list] = {}
    for key in (cells or feats):
        by_width.setdefault(feats[key][0].numel(), []).append(key)
    return sum(len(keys) * epoch_flops(lambda e, one=keys[:1]: train(e, one), epochs) for keys in by_width.values())


def epoch_flops(train, epochs: int) -> int:
    """FLOPs of `train(epochs)` (probe training, then scoring), from torch's counts of no epoch (the
    set-up and the scoring alone) and of one: exact, as every epoch costs the same, and cheap, where
    counting the whole run would slow each of its many small steps (quietly: what the counted runs
    print is dropped)."""
    with redirect_stdout(io.StringIO()):
        none, one = count_flops(lambda: train(0)), count_flops(lambda: train(1))
    return none + epochs * (one - none)


def image_flops(source, images) -> int:
    """FLOPs of one image through `source` (every t and draw), counted on the first of `images` (a
    tensor or `ImageFiles`): every image of a sweep costs the same."""
    return count_flops(lambda: source.maps(torch.as_tensor(images[0])[None], indices=torch.zeros(1, dtype=torch.long)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageMeter:
    """Seconds and counted FLOPs of named stages, and each stage's fraction of the matmul rate."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.stages: dict[str, dict] = {}
        self.rates: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, precision: str, count: bool = True):
        """Time the work done inside, and count its FLOPs unless `count` is False (then `add` them); a
        stage entered again adds to its totals."""
        counter = FlopCounterMode(display=False) if count else None
        start = time.perf_counter()
        if counter is None:
            yield
        else:
            with counter:
                yield
        _sync(self.device)
        row = self._row(name, precision)
        row["seconds"] += time.perf_counter() - start
        row["flop"] += counter.get_total_flops() if counter is not None else 0

    def add(self, name: str, precision: str, flop) -> None:
        """FLOPs counted apart (`count_flops` of one image, times the images) added to a stage: a number,
        or a function that counts them, timed as the stage 'FLOP counting' (its cost is the meter's,
        not the stage's, and the table still adds up to the run)."""
        if callable(flop):
            start = time.perf_counter()
            flop = flop()
            self._row(COUNTING, precision)["seconds"] += time.perf_counter() - start
        self._row(name, precision)["flop"] += int(flop)

    def _row(self, name: str, precision: str) -> dict:
        return self.stages.setdefault(name, {"seconds": 0.0, "flop": 0, "precision": precision})

    def table(self) -> dict[str, dict]:
        """{stage: {seconds, gflop, gflop_per_s, matmul_gflop_per_s, matmul_fraction, precision}}, the
        FLOP counting last; the matmul rates are measured now, once per precision."""
        out = {}
        for name, row in sorted(self.stages.items(), key=lambda item: item[0] == COUNTING):
            precision = row["precision"]
            if precision not in self.rates:
                self.rates[precision] = matmul_rate(self.device, precision)
            rate = row["flop"] / max(row["seconds"], 1e-9) / 1e9
            out[name] = {"seconds": round(row["seconds"], 2), "gflop": round(row["flop"] / 1e9, 3),
         "gflop_per_s": round(rate, 2), "matmul_gflop_per_s": round(self.rates[precision], 1),
                         "matmul_fraction": round(rate / self.rates[precision], 3), "precision": precision}
        return out


def format_stages(table: dict[str, dict]) -> str:
    """The stage table as the commands print it."""
    lines = [f"{'stage':24s} {'seconds':>8s} {'GFLOP':>9s} {'GFLOP/s':>8s} {'of matmul':>9s}  precision"]
    for name, r in table.items():
        lines.append(f"{name:24s} {r['seconds']:8.1f} {r['gflop']:9.1f} {r['gflop_per_s']:8.1f} "
                     f"{100 * r['matmul_fraction']:8.1f}%  {r['precision']} (matmul {r['matmul_gflop_per_s']:.0f} GFLOP/s)")
    return "\n".join(lines)
