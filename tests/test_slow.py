"""Long checks on the bundled model (minutes on 2 cores): run with `python -m pytest -m slow`."""

from __future__ import annotations

import pytest

from diffrep.sweep import SweepConfig, run_sweep


@pytest.mark.slow
def test_bundled_sweep_beats_baselines_and_reaches_98_5(tmp_path):
    result = run_sweep(SweepConfig(), tmp_path / "sweep")
    best, baselines = result["best"]["accuracy"], result["baselines"]
    assert best >= 0.985
    assert best > baselines["pixels"] and best > baselines["random_init"]
    assert result["timing_s"]["total"] < 600
