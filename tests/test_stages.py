"""The stage meter (seconds and torch-counted FLOPs per stage, against the matmul rate) and `auto`
precision (bf16 where it is native, fp32 elsewhere), as the commands resolve it."""

from __future__ import annotations

import time

import pytest
import torch

from diffrep.classify.ddae import SweepConfig
from diffrep.core.precision import native_bf16, resolve_precision
from diffrep.stages import StageMeter, count_flops, format_stages, matmul_rate


def test_stage_meter_counts_a_known_matmul_and_adds_up_a_stage_entered_twice():
    meter = StageMeter("cpu")
    a, b = torch.randn(256, 512), torch.randn(512, 128)
    for _ in range(2):
        with meter.stage("matmul", "fp32"):
            a @ b
    with meter.stage("nothing counted", "fp32"):
        torch.zeros(1000).add_(1)   # elementwise work counts no FLOPs
    table = meter.table()
    assert table["matmul"]["gflop"] == pytest.approx(2 * 2 * 256 * 512 * 128 / 1e9, abs=1e-3)
    assert table["nothing counted"]["gflop"] == 0 and table["nothing counted"]["matmul_fraction"] == 0
    row = table["matmul"]
    assert row["seconds"] >= 0 and row["precision"] == "fp32" and row["matmul_gflop_per_s"] > 0
    assert row["matmul_fraction"] == pytest.approx(row["gflop_per_s"] / row["matmul_gflop_per_s"], abs=1e-3)
    assert "matmul" in format_stages(table) and "of matmul" in format_stages(table)


def test_flops_counted_apart_are_timed_as_the_meters_own_stage():
    meter = StageMeter("cpu")
    with meter.stage("images", "fp32", count=False):
        torch.randn(64, 64) @ torch.randn(64, 64)
    def count():   # as slow as counting a network is
        time.sleep(0.05)
        return 10 * count_flops(lambda: torch.randn(256, 256) @ torch.randn(256, 256))
    meter.add("images", "fp32", count)
    table = meter.table()
    assert list(table) == ["images", "FLOP counting"]
    assert table["images"]["gflop"] == pytest.approx(10 * 2 * 256 ** 3 / 1e9, abs=1e-3)
    assert table["FLOP counting"]["gflop"] == 0 and table["FLOP counting"]["seconds"] >= 0.05
    assert table["images"]["seconds"] < 0.05   # the counting is not the stage's


def test_matmul_rate_is_measured_in_each_precision():
    assert matmul_rate("cpu", "fp32", repeats=1) > 0
    if native_bf16("cpu"):
        assert matmul_rate("cpu", "bf16", repeats=1) > 0


def test_auto_precision_is_bf16_exactly_where_it_is_native():
    expected = "bf16" if native_bf16("cpu") else "fp32"
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert SweepConfig(device="cpu").precision == expected            # the commands' default, resolved when made
    assert SweepConfig(device="cpu", precision="fp32").precision == "fp32"


def test_auto_precision_is_fp32_when_torch_runs_below_avx512(monkeypatch):
    """ATEN_CPU_CAPABILITY=avx2 (imitating an AVX2 machine) leaves bf16 emulated, whatever the CPU has."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not native_bf16("cpu") and resolve_precision("auto", "cpu") == "fp32"


def test_epoch_flops_extrapolate_no_epoch_and_one_exactly():
    """A probe's FLOPs from counts of no epoch and of one equal the count of the whole run: the sweep
    counts its probe stages this way, since counting every small step would slow them."""
    from diffrep.stages import epoch_flops
    from diffrep.heads import train_probe_grid
    from diffrep.stages import count_flops

    gen = torch.Generator().manual_seed(0)
    x = {"a": torch.randn(64, 12, generator=gen), "b": torch.randn(64, 30, generator=gen)}
    y = torch.randint(0, 3, (64,), generator=gen)

    def train(epochs):
        return train_probe_grid(x, y, x, y, epochs=epochs, batch_size=16)
    assert epoch_flops(train, 5) == count_flops(lambda: train(5)) > 0


def test_probe_flops_from_one_cell_per_width_equal_the_whole_count():
    """The sweep counts its probes' FLOPs on one cell of each feature width, times the cells of that
    width: exact, since a width's heads train as one batched matmul."""
    from diffrep.stages import probe_flops
    from diffrep.heads import cross_validated_accuracy, train_probe_grid

    gen = torch.Generator().manual_seed(0)
    x = {name: torch.randn(48, width, generator=gen) for name, width in (("a", 12), ("b", 12), ("c", 30), ("d", 12))}
    y = torch.randint(0, 3, (48,), generator=gen)

    def grid(epochs, cells):
        return train_probe_grid({k: x[k] for k in cells}, y, {k: x[k] for k in cells}, y, epochs=epochs, batch_size=16)

    def cv(epochs, cells):
        return cross_validated_accuracy({k: x[k] for k in cells}, y, dict.fromkeys(cells, 1e-3), folds=3, epochs=epochs)
    for train in (grid, cv):
        assert probe_flops(train, x, 4) == count_flops(lambda: train(4, list(x))) > 0
    assert probe_flops(grid, x, 4, cells=["a", "c"]) == count_flops(lambda: grid(4, ["a", "c"]))


def test_the_sweeps_cross_validation_flops_are_counted_exactly():
    """The sweep's own cross-validation closure, counted from no epoch and one, against the count of
    the whole run (a closure that read 0 epochs as 'the default' once counted 60 for none)."""
    from diffrep.classify.ddae import cross_validate
    from diffrep.stages import probe_flops

    cfg = SweepConfig(epochs=3, folds=3, device="cpu", precision="fp32")
    gen = torch.Generator().manual_seed(0)
    x = {name: torch.randn(48, width, generator=gen) for name, width in (("a", 12), ("b", 30))}
    y = torch.randint(0, 3, (48,), generator=gen)
    decays = dict.fromkeys(x, 1e-3)
    counted = probe_flops(lambda e, cells: cross_validate(cfg, x, y, {k: decays[k] for k in cells}, e), x, cfg.epochs)
    assert counted == count_flops(lambda: cross_validate(cfg, x, y, decays)) > 0
